#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ipvs_service
short_description: One IPVS virtual service and its real servers
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Creates, updates in place or deletes one IPVS virtual service, named by O(protocol),
    O(address) and O(port), or by O(fwmark).
  - Changes of scheduler, flags, persistence and weights are made in place (IPVS SET_SERVICE and
    SET_DEST), never by deleting and re-adding, so established connections survive.
  - With O(purge_real_servers=true), real servers that are not listed are removed gracefully the
    way kube-proxy does it - a TCP real server with connections (active + inactive) is set to
    weight 0 and deleted by a later run once its connections are gone or O(drain_timeout) has
    passed (the start of each drain is kept in C(/run/kubeipvs/ipvs-drain.json)). UDP and SCTP
    real servers are deleted at once.
  - Every option is checked before anything changes; the scheduler's kernel module
    (C(ip_vs_<scheduler>)) is loaded when needed and the task fails clearly when it does not exist.
  - Talks to the kernel through hand-packed generic netlink messages; needs no Python library on the node.
  - For whole tables (thousands of services) use M(kubeipvs.node.ipvs_sync).
extends_documentation_fragment:
  - kubeipvs.node.attributes
  - kubeipvs.node.ipvs_drain
options:
  protocol:
    description: Protocol of the service; V(tcp) when not given. Not used with O(fwmark).
    type: str
    choices: [tcp, udp, sctp]
  address:
    description:
      - Virtual IP address (IPv4 or IPv6, optionally with V(/32) or V(/128)).
      - Required unless O(fwmark) is given.
    type: str
  port:
    description: Virtual port, 1-65535. Required unless O(fwmark) is given.
    type: int
  fwmark:
    description: Firewall mark of a fwmark service, instead of O(protocol), O(address) and O(port).
    type: int
  family:
    description:
      - Address family. Taken from O(address) when not given; needed for IPv6 fwmark services
        (V(inet) otherwise).
    type: str
    choices: [inet, inet6]
  scheduler:
    description: IPVS scheduler.
    type: str
    default: rr
    choices: [rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos]
  scheduler_flags:
    description:
      - Scheduler flags; V(sh-fallback) and V(mh-fallback) set IP_VS_SVC_F_SCHED1, V(sh-port) and
        V(mh-port) set IP_VS_SVC_F_SCHED2. Only valid with the matching scheduler.
    type: list
    elements: str
    choices: [sh-fallback, sh-port, mh-fallback, mh-port]
  persistence_timeout:
    description: Seconds of client persistence (kube-proxy's sessionAffinity ClientIP); V(0) means not persistent.
    type: int
    default: 0
  netmask:
    description:
      - Persistence granularity - a dotted mask or prefix length for IPv4 (V(255.255.255.255)
        by default), a prefix length for IPv6 (V(128) by default).
    type: str
  real_servers:
    description: The real servers (destinations) of the service.
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: Address of the real server, same family as the service.
        type: str
        required: true
      port:
        description: Port of the real server; the service's port when not given (V(0) allowed for fwmark services).
        type: int
      weight:
        description: Weight, 0-65535; V(0) sends no new connections.
        type: int
        default: 1
      forwarding:
        description: Forwarding method - masquerading (V(nat), what kube-proxy uses), direct routing or IP-in-IP.
        type: str
        choices: [nat, route, tunnel]
        default: nat
      upper_threshold:
        description: Upper connection threshold (V(0) = none).
        type: int
        default: 0
      lower_threshold:
        description: Lower connection threshold (V(0) = none); must not exceed O(real_servers[].upper_threshold).
        type: int
        default: 0
  purge_real_servers:
    description: Remove real servers of this service that O(real_servers) does not list (with graceful drain).
    type: bool
    default: false
  state:
    description: V(present) creates or updates the service, V(absent) deletes it with its real servers.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: kubeipvs.node.ipvs_sync
  - module: kubeipvs.node.dummy_interface
"""

EXAMPLES = r"""
- name: A ClusterIP service load-balanced round robin over three pods
  kubeipvs.node.ipvs_service:
    protocol: tcp
    address: 10.96.0.10
    port: 80
    scheduler: rr
    real_servers:
      - {address: 10.244.1.5, port: 8080}
      - {address: 10.244.2.7, port: 8080}
      - {address: 10.244.3.9, port: 8080, weight: 2}
    purge_real_servers: true

- name: Session affinity (ClientIP, 3 hours)
  kubeipvs.node.ipvs_service:
    protocol: udp
    address: 10.96.0.53
    port: 53
    persistence_timeout: 10800
    real_servers:
      - {address: 10.244.1.2}

- name: An IPv6 fwmark service with source hashing on ports
  kubeipvs.node.ipvs_service:
    fwmark: 42
    family: inet6
    scheduler: sh
    scheduler_flags: [sh-port]
    real_servers:
      - {address: "fd00:10:244::5", port: 0}

- name: Remove a service
  kubeipvs.node.ipvs_service:
    address: 10.96.0.10
    port: 80
    state: absent
"""

RETURN = r"""
service:
  description: The service after the run (or as it would be, in check mode); null when absent.
  returned: always
  type: dict
  sample:
    family: inet
    protocol: tcp
    address: 10.96.0.10
    port: 80
    scheduler: rr
    flags: 0
    persistence_timeout: 0
    netmask: 255.255.255.255
    real_servers:
      - {address: 10.244.1.5, port: 8080, forwarding: nat, weight: 1, upper_threshold: 0, lower_threshold: 0,
         active_connections: 0, inactive_connections: 0}
draining:
  description: Real servers kept at weight 0 until their connections end, as C(service -> real server).
  returned: always
  type: list
  elements: str
  sample: ["tcp/10.96.0.10:80 -> 10.244.2.7:8080"]
changes:
  description: The changes made (or to be made, in check mode) as ipvsadm-like lines.
  returned: always
  type: list
  elements: str
  sample: ["-A -t 10.96.0.10:80 -s rr", "-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs_reconcile import reconcile
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import modprobe_for
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import normalize_service
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import change_line, simulate

SERVICE_OPTIONS = ("protocol", "address", "port", "fwmark", "family", "scheduler", "scheduler_flags",
                   "persistence_timeout", "netmask", "real_servers", "purge_real_servers", "state")


def ensure_service(module):
    params = module.params
    if params["drain_timeout"] is not None and params["drain_timeout"] < 0:
        raise KubeIpvsError("drain_timeout must be 0 or more seconds")
    entry = {name: params[name] for name in SERVICE_OPTIONS}
    service, state = normalize_service(entry, "ipvs_service", purge_default=False)
    present = state == "present"
    run = reconcile(modprobe_for(module, required=False), [service] if present else [],
                    absent=[] if present else [service], keys=[service.key], drain_timeout=params["drain_timeout"],
                    check_mode=module.check_mode)
    before = run.current.get(service.key)
    after = simulate(run.current, run.changes).get(service.key)
    return {
        "changed": run.changed,
        "service": after.as_dict() if after else None,
        "draining": run.plan.draining,
        "changes": [change_line(change) for change in run.changes],
        "diff": {"before": before.as_dict() if before else {}, "after": after.as_dict() if after else {}},
    }


def main():
    module = ansible_module(
        AnsibleModule,
        argument_spec=dict(
            protocol=dict(type="str", choices=["tcp", "udp", "sctp"]),
            address=dict(type="str"),
            port=dict(type="int"),
            fwmark=dict(type="int"),
            family=dict(type="str", choices=["inet", "inet6"]),
            scheduler=dict(type="str", default="rr", choices=["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh",
                                                              "sed", "nq", "mh", "fo", "ovf", "twos"]),
            scheduler_flags=dict(type="list", elements="str",
                                 choices=["sh-fallback", "sh-port", "mh-fallback", "mh-port"]),
            persistence_timeout=dict(type="int", default=0),
            netmask=dict(type="str"),
            real_servers=dict(type="list", elements="dict", default=[], options=dict(
                address=dict(type="str", required=True),
                port=dict(type="int"),
                weight=dict(type="int", default=1),
                forwarding=dict(type="str", choices=["nat", "route", "tunnel"], default="nat"),
                upper_threshold=dict(type="int", default=0),
                lower_threshold=dict(type="int", default=0),
            )),
            purge_real_servers=dict(type="bool", default=False),
            drain_timeout=dict(type="int"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        mutually_exclusive=[["fwmark", "address"], ["fwmark", "port"], ["fwmark", "protocol"]],
        required_one_of=[["fwmark", "address"]],
        required_by={"address": "port"},
        supports_check_mode=True,
    )
    run_module(module, ensure_service)


if __name__ == "__main__":
    main()
