#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ipvs_sync
short_description: The whole IPVS table of a node in one call, for 10k-50k services
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Makes the IPVS services inside O(scope) exactly the listed ones - reads the kernel once (one
    service dump, and the real servers from one read of C(/proc/net/ip_vs)), computes the
    smallest change set in memory and sends it hundreds of messages per system call.
  - Services outside O(scope) are never modified or deleted, even with O(exclusive=true) - a
    keepalived or hand-made service on the same node survives. A listed service outside O(scope)
    is an error.
  - Real servers a listed service no longer has are drained like kube-proxy does (see
    M(kubeipvs.node.ipvs_service)); the drain clock of each is kept in C(/run/kubeipvs/ipvs-drain.json).
  - Optionally sets the global IPVS timeouts (what C(ipvsadm --set) sets).
  - Everything is validated before anything changes.
  - Talks to the kernel through hand-packed generic netlink messages; needs no Python library on the node.
extends_documentation_fragment:
  - kubeipvs.node.state_src
  - kubeipvs.node.attributes
  - kubeipvs.node.ipvs_drain
options:
  services:
    description:
      - The desired services. Each item has the options of M(kubeipvs.node.ipvs_service) -
        C(protocol), C(address), C(port) or C(fwmark), C(family), C(scheduler),
        C(scheduler_flags), C(persistence_timeout), C(netmask), C(real_servers) (items with
        C(address), C(port), C(weight), C(forwarding), C(upper_threshold), C(lower_threshold)),
        C(purge_real_servers) (default V(true) here) and C(state).
      - Items are checked by the module itself (not by Ansible's option parser), which keeps
        50k services fast.
    type: list
    elements: dict
  services_file:
    description:
      - Path on the node to a JSON file (or YAML, when PyYAML is installed on the node) holding
        the list of services, or a mapping with the list under C(services). Use this for large tables.
    type: path
  scope:
    description: Which IPVS services this task owns; at least one of the sub-options is needed.
    type: dict
    required: true
    suboptions:
      cidrs:
        description: Services whose virtual IP lies in one of these networks are owned.
        type: list
        elements: str
        default: []
      dummy_interface:
        description: Services whose virtual IP is an address on this link (kube-proxy's C(kube-ipvs0)) are owned.
        type: str
      fwmarks:
        description: Firewall-mark services with these marks are owned.
        type: list
        elements: int
        default: []
      node_port_cidrs:
        description:
          - Addresses where only ports inside O(scope.node_port_range) are owned - the node's own
            addresses, where kube-proxy owns its NodePorts and health-check node ports and nothing
            else. A keepalived service on a node address and another port stays foreign.
          - V(0.0.0.0/0) and V(::/0) stand for every address, kube-proxy's default
            C(nodePortAddresses).
        type: list
        elements: str
        default: []
      node_port_range:
        description: The cluster's NodePort range (the API server's C(--service-node-port-range)).
        type: str
        default: 30000-32767
  exclusive:
    description: Delete owned services (inside O(scope)) that are not listed.
    type: bool
    default: true
  timeouts:
    description: Global IPVS connection timeouts in seconds; only the given ones are set.
    type: dict
    suboptions:
      tcp:
        description: Established TCP connections.
        type: int
      tcp_fin:
        description: TCP connections after a FIN.
        type: int
      udp:
        description: UDP flows.
        type: int
  diff_lines:
    description: How many changes the diff and RV(changes) show as ipvsadm-like lines.
    type: int
    default: 20
seealso:
  - module: kubeipvs.node.ipvs_service
  - module: kubeipvs.node.dummy_interface
notes:
  - O(state_src) may hold O(services).
"""

EXAMPLES = r"""
- name: Every ClusterIP service of the node, owning only VIPs on kube-ipvs0
  kubeipvs.node.ipvs_sync:
    scope:
      dummy_interface: kube-ipvs0
    services:
      - protocol: tcp
        address: 10.96.0.1
        port: 443
        real_servers:
          - {address: 192.168.1.10, port: 6443}
      - protocol: udp
        address: 10.96.0.10
        port: 53
        real_servers:
          - {address: 10.244.1.2}
          - {address: 10.244.2.3}

- name: 20k services from a file generated on the node, plus global timeouts
  kubeipvs.node.ipvs_sync:
    services_file: /var/lib/kubeipvs/services.json
    scope:
      cidrs: [10.96.0.0/12, "fd00:10:96::/112"]
      fwmarks: [4096]
    timeouts: {tcp: 900, tcp_fin: 120, udp: 300}
"""

RETURN = r"""
counts:
  description: Changes made (or to be made, in check mode) and real servers waiting for their connections to end.
  returned: always
  type: dict
  sample: {services_added: 10, services_updated: 1, services_removed: 2, real_servers_added: 100,
           real_servers_updated: 3, real_servers_removed: 4, real_servers_draining: 1}
changes:
  description: The first O(diff_lines) changes as ipvsadm-like lines.
  returned: always
  type: list
  elements: str
  sample: ["-A -t 10.96.0.10:80 -s rr", "-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1"]
draining:
  description: The first O(diff_lines) real servers kept at weight 0 until their connections end.
  returned: always
  type: list
  elements: str
  sample: ["tcp/10.96.0.10:80 -> 10.244.2.7:8080"]
services:
  description: Number of owned services after the run (or as it would be, in check mode).
  returned: always
  type: int
  sample: 10000
foreign_services:
  description: Number of IPVS services outside O(scope), which were left alone.
  returned: always
  type: int
  sample: 1
timeouts:
  description:
    - Global IPVS timeouts after the run (or as they would be, in check mode).
    - Empty when IPVS is not loaded yet (check mode).
  returned: always
  type: dict
  sample: {tcp: 900, tcp_fin: 120, udp: 300}
"""

import contextlib
import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._collector import collector_paused
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs_reconcile import reconcile
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import modprobe_for
from ansible_collections.kubeipvs.node.plugins.module_utils.node._links import LinkKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import normalize_services
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    Scope,
    change_line,
    result_counts,
    scope_settings,
    summarize,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import validate_link_name


def load_services_file(path):
    """The service list from a JSON file (fast, C parser) or a YAML file (needs PyYAML on the node)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise KubeIpvsError(f"cannot read services_file {path}: {error.strerror}") from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise KubeIpvsError(f"services_file {path} is nested too deeply to be a list of services") from None
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise KubeIpvsError(f"services_file {path} is not JSON, and PyYAML is not installed on the node "
                                "to read it as YAML: write it as JSON") from None
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(raw, Loader=loader)  # a safe loader (C one when available)
        except yaml.YAMLError as error:
            raise KubeIpvsError(f"services_file {path} is neither JSON nor valid YAML: {error}") from None
        except RecursionError:
            raise KubeIpvsError(f"services_file {path} is nested too deeply to be a list of services") from None
    if isinstance(data, dict) and "services" in data:
        data = data["services"]
    if not isinstance(data, list):
        raise KubeIpvsError(f"services_file {path} must hold a list of services (or a mapping with 'services')")
    return data


def build_scope(scope_params):
    settings = scope_settings(scope_params)
    link_name = settings["dummy_interface"]
    if link_name:
        validate_link_name(link_name)
    if not (settings["cidrs"] or settings["fwmarks"] or link_name or settings["node_port_cidrs"]):
        raise KubeIpvsError("scope needs at least one of cidrs, dummy_interface, fwmarks or node_port_cidrs: "
                            "without it this task would own nothing")
    addresses = ()
    if link_name:
        with contextlib.closing(LinkKernel()) as links:
            link = links.get_link(link_name)
            addresses = links.addresses(link) if link is not None else {}
    return Scope(cidrs=settings["cidrs"], addresses=addresses, fwmarks=settings["fwmarks"],
                 node_port_cidrs=settings["node_port_cidrs"], node_port_range=settings["node_port_range"])


def check_scope(desired, scope):
    outside = [service.label() for service in desired if not scope.contains(service)]
    if outside:
        raise KubeIpvsError(f"{len(outside)} listed service(s) lie outside scope, which would let this task change "
                            f"services it does not own: {', '.join(outside[:10])}; widen scope or fix the list",
                            outside_scope=outside[:100])


def check_timeouts(timeouts):
    wanted = {name: value for name, value in (timeouts or {}).items() if value is not None}
    for name, value in wanted.items():
        if not 1 <= value <= 2147483:
            raise KubeIpvsError(f"timeouts.{name} must be between 1 and 2147483 seconds, not {value}")
    return wanted


def sync(module):
    params = module.params
    if params["services"] is None and params["services_file"] is None:
        raise KubeIpvsError("give services or services_file")
    if params["drain_timeout"] is not None and params["drain_timeout"] < 0:
        raise KubeIpvsError("drain_timeout must be 0 or more seconds")
    if params["diff_lines"] < 0:
        raise KubeIpvsError("diff_lines must be 0 or more")
    wanted_timeouts = check_timeouts(params["timeouts"])
    entries = params["services"] if params["services"] is not None else load_services_file(params["services_file"])
    desired, absent = normalize_services(entries, "services", purge_default=True)
    del entries  # at 50k services the raw list is as large as the validated one
    scope = build_scope(params["scope"])
    check_scope(desired + absent, scope)

    run = reconcile(modprobe_for(module, required=False), desired, absent, scope=scope, exclusive=params["exclusive"],
                    drain_timeout=params["drain_timeout"], timeouts=wanted_timeouts, check_mode=module.check_mode)
    plan = run.plan
    owned = sum(1 for service in run.current.values() if scope.contains(service))
    counts = result_counts(plan)
    limit = params["diff_lines"]
    summary = summarize(plan, limit)
    if run.timeouts_set:
        shown = ", ".join(f"{name} {run.timeouts.get(name)} -> {value}"
                          for name, value in sorted(run.timeouts_set.items()))
        summary += f"# timeouts: {shown}\n"
    return {
        "changed": run.changed,
        "counts": counts,
        "changes": [change_line(change) for change in run.changes[:limit]],
        "draining": plan.draining[:limit],
        "services": owned + counts["services_added"] - counts["services_removed"],
        "foreign_services": len(run.current) - owned,
        "timeouts": dict(run.timeouts, **run.timeouts_set),
        "diff": {"prepared": summary},
    }


def sync_paused(module):
    """The whole run - input, validation, the table - with the cyclic garbage collector paused."""
    with collector_paused():
        return sync(module)


def main():
    module = state_module(
        AnsibleModule,
        state_options=("services",),
        argument_spec=dict(
            services=dict(type="list", elements="dict"),
            services_file=dict(type="path"),
            scope=dict(type="dict", required=True, options=dict(
                cidrs=dict(type="list", elements="str", default=[]),
                dummy_interface=dict(type="str"),
                fwmarks=dict(type="list", elements="int", default=[]),
                node_port_cidrs=dict(type="list", elements="str", default=[]),
                node_port_range=dict(type="str", default="30000-32767"),
            )),
            exclusive=dict(type="bool", default=True),
            drain_timeout=dict(type="int"),
            timeouts=dict(type="dict", options=dict(
                tcp=dict(type="int"),
                tcp_fin=dict(type="int"),
                udp=dict(type="int"),
            )),
            diff_lines=dict(type="int", default=20),
        ),
        mutually_exclusive=[["services", "services_file"]],
        required_one_of=[["services", "services_file"]],
        supports_check_mode=True,
    )
    run_module(module, sync_paused)


if __name__ == "__main__":
    main()
