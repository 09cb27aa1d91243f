#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: conntrack
short_description: Size the connection tracking table as kube-proxy does, live and across reboots
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Computes kube-proxy's sizing, C(nf_conntrack_max = max(max_per_core x CPUs, min)) and
    C(hashsize = nf_conntrack_max / 4), or takes explicit O(max) and O(hashsize).
  - Loads C(nf_conntrack) (with the hash size) and lists it in O(modules_load_file); sets
    C(net.netfilter.nf_conntrack_max) and the TCP established and close-wait timeouts live and in
    O(file), an owned C(/etc/sysctl.d/) drop-in; sets the hash size live through
    C(/sys/module/nf_conntrack/parameters/hashsize) and for boot as C(options nf_conntrack hashsize=)
    in O(modprobe_file).
  - Sizes must lie within the kernel's limits (also in check mode); when a step fails, the hash
    size, values, files and the module load of this call are put back.
  - The hash size can only be written from the initial network namespace on a writable C(/sys);
    elsewhere (a container) the module warns, persists it for boot and sets everything else.
  - "kube-proxy rewrites these values at every start. To keep the ones set here, run it with
    C(conntrack.maxPerCore: 0) (and C(tcpEstablishedTimeout: 0s), C(tcpCloseWaitTimeout: 0s)) in its
    C(KubeProxyConfiguration); the result says so too."
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  max_per_core:
    description: Connections per CPU (kube-proxy's C(conntrack.maxPerCore)). Must be positive.
    type: int
    default: 32768
  min:
    description: Lower bound of the computed C(nf_conntrack_max) (kube-proxy's C(conntrack.min)). Must be positive.
    type: int
    default: 131072
  max:
    description: Explicit C(nf_conntrack_max) instead of the computed one. Must be positive.
    type: int
  hashsize:
    description: Explicit hash table size instead of O(max) / 4. Must be positive.
    type: int
  tcp_timeout_established:
    description: Seconds for C(net.netfilter.nf_conntrack_tcp_timeout_established). Must be positive.
    type: int
    default: 86400
  tcp_timeout_close_wait:
    description: Seconds for C(net.netfilter.nf_conntrack_tcp_timeout_close_wait). Must be positive.
    type: int
    default: 3600
  file:
    description: The owned sysctl drop-in; a C(.conf) file directly under C(/etc/sysctl.d/).
    type: path
    default: /etc/sysctl.d/90-kubeipvs-conntrack.conf
  modules_load_file:
    description:
      - The owned modules-load.d drop-in that lists C(nf_conntrack) (shared with M(kubeipvs.node.kernel_module)).
    type: path
    default: /etc/modules-load.d/kubeipvs-node.conf
  modprobe_file:
    description:
      - The owned modprobe.d drop-in with C(options nf_conntrack hashsize=) (shared with
        M(kubeipvs.node.kernel_module); other C(nf_conntrack) options in it are kept).
    type: path
    default: /etc/modprobe.d/kubeipvs-node.conf
seealso:
  - module: kubeipvs.node.kernel_module
  - module: kubeipvs.node.sysctl
"""

EXAMPLES = r"""
- name: Size conntrack as kube-proxy would (max(32768 x CPUs, 131072), hashsize max/4)
  kubeipvs.node.conntrack:
  register: node_conntrack

- name: Show the figures and the current usage
  ansible.builtin.debug:
    msg: "{{ node_conntrack.nf_conntrack_count }} of {{ node_conntrack.nf_conntrack_max }} entries used"

- name: A fixed size for a big load balancer
  kubeipvs.node.conntrack:
    max: 1048576
    hashsize: 262144
"""

RETURN = r"""
cpus:
  description: CPUs counted for the formula (the ones this process may run on).
  returned: always
  type: int
  sample: 2
nf_conntrack_max:
  description: The computed (or explicit) C(net.netfilter.nf_conntrack_max).
  returned: always
  type: int
  sample: 131072
hashsize:
  description: The computed (or explicit) hash table size.
  returned: always
  type: int
  sample: 32768
max_source:
  description: Where C(nf_conntrack_max) came from, V(max_per_core), V(min) or V(explicit).
  returned: always
  type: str
  sample: min
hashsize_live:
  description: The hash size the kernel uses after the run (null when nf_conntrack is not loaded, in check mode).
  returned: always
  type: int
  sample: 32768
nf_conntrack_count:
  description: Connections tracked right now (null when nf_conntrack is not loaded, in check mode).
  returned: always
  type: int
  sample: 12
values:
  description: Per sysctl key, the value before and after the run.
  returned: always
  type: dict
  sample: {net.netfilter.nf_conntrack_max: {before: "65536", after: "131072"}}
kube_proxy:
  description: How to stop kube-proxy from overwriting these values at its next start.
  returned: always
  type: dict
  contains:
    note:
      description: The explanation.
      type: str
      sample: kube-proxy sets nf_conntrack_max ... at every start.
    conntrack:
      description: The C(conntrack) section to put into kube-proxy's C(KubeProxyConfiguration).
      type: dict
      sample: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
"""

import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._conntrack import cpu_count, hashsize_blocker
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import plan_file
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import (
    KernelModules,
    modprobe_for,
    plan_persistence,
    record_loads,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._sysctl import Sysctl, apply_writes, probe_in_scratch
from ansible_collections.kubeipvs.node.plugins.module_utils.node._undo import Undo
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._conntrack import (
    COUNT_KEY,
    HASHSIZE_PARAM,
    KUBE_PROXY_CONNTRACK,
    KUBE_PROXY_NOTE,
    MAX_KEY,
    TIMEOUT_CLOSE_WAIT_KEY,
    TIMEOUT_ESTABLISHED_KEY,
    compute_sizing,
    require_positive,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import validate_owned_path
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import plan_live, render_dropin

MODULE = "nf_conntrack"


def ensure_conntrack(module, root="/"):
    params = module.params
    require_positive(
        tcp_timeout_established=params["tcp_timeout_established"],
        tcp_timeout_close_wait=params["tcp_timeout_close_wait"],
    )
    sizing = compute_sizing(cpu_count(), params["max_per_core"], params["min"], params["max"], params["hashsize"])
    validate_owned_path(params["file"], "/etc/sysctl.d", "file")
    validate_owned_path(params["modules_load_file"], "/etc/modules-load.d", "modules_load_file")
    validate_owned_path(params["modprobe_file"], "/etc/modprobe.d", "modprobe_file")

    kmods = KernelModules(root)
    sysctl = Sysctl(root)
    undo = Undo()
    return undo.run(lambda: converge(module, root, kmods, sysctl, sizing, undo))


def converge(module, root, kmods, sysctl, sizing, undo):
    """Load nf_conntrack, plan, try the values in a scratch namespace, then write; every step records in
    ``undo`` how to put back what it changed, so a failure leaves the node as it was."""
    params = module.params
    _name, kind = kmods.resolve(MODULE)
    settings = {
        MAX_KEY: sizing["nf_conntrack_max"],
        TIMEOUT_ESTABLISHED_KEY: params["tcp_timeout_established"],
        TIMEOUT_CLOSE_WAIT_KEY: params["tcp_timeout_close_wait"],
    }
    hashsize = str(sizing["hashsize"])
    warnings = []
    to_load = not kmods.is_present(MODULE)
    if to_load and not module.check_mode:
        # Loading with the parameter gives the right table from the start (no rehash).
        modprobe = modprobe_for(module)
        record_loads(undo, kmods, Commands.of(module).run, module.get_bin_path)
        modprobe.load(MODULE, {HASHSIZE_PARAM: hashsize})
        warnings.extend(modprobe.warnings)

    plan, wanted = plan_live(sysctl, settings, apply=True)
    if plan.writes and root == "/":
        probe_in_scratch(Commands.of(module), sys.executable, plan.writes)
    hashsize_before = kmods.params(MODULE).get(HASHSIZE_PARAM)
    hashsize_write = not (to_load and module.check_mode) and hashsize_before != hashsize
    if hashsize_write:
        blocker = hashsize_blocker(root)
        if blocker:
            warnings.append(f"hashsize stays {hashsize_before} until the next boot: {blocker}")
            hashsize_write = False

    changes = [plan_file(root, params["file"], render_dropin(wanted, "conntrack"))]
    changes.extend(
        plan_persistence(
            kmods,
            params["modules_load_file"],
            params["modprobe_file"],
            [MODULE] if kind == "loadable" else [],
            (),
            {MODULE: {HASHSIZE_PARAM: hashsize}} if kind == "loadable" else {},
            merge_options=True,
        )
    )
    changes = [change for change in changes if change.changed]

    if not module.check_mode:
        if hashsize_write:
            if hashsize_before:
                undo.record(HASHSIZE_PARAM, lambda: kmods.write_param(MODULE, HASHSIZE_PARAM, hashsize_before))
            kmods.write_param(MODULE, HASHSIZE_PARAM, hashsize)
        apply_writes(sysctl, plan.writes, changes, root, move=module.atomic_move, undo=undo)
    for warning in warnings:
        module.warn(warning)

    hashsize_live = hashsize if hashsize_write and not module.check_mode else kmods.params(MODULE).get(HASHSIZE_PARAM)
    count = sysctl.read(COUNT_KEY)
    result = dict(
        sizing,
        changed=bool(to_load or plan.writes or hashsize_write or changes),
        hashsize_live=int(hashsize_live) if hashsize_live else None,
        nf_conntrack_count=int(count) if count else None,
        values={key: {"before": plan.before[key], "after": plan.after[key]} for key in settings},
        kube_proxy={"note": KUBE_PROXY_NOTE, "conntrack": dict(KUBE_PROXY_CONNTRACK)},
    )
    if module._diff:
        live = plan.live_diff()
        if hashsize_write or (to_load and module.check_mode):
            live["before"] += f"{HASHSIZE_PARAM} = {hashsize_before or '<nf_conntrack not loaded>'}\n"
            live["after"] += f"{HASHSIZE_PARAM} = {hashsize}\n"
        result["diff"] = ([live] if plan.writes or hashsize_write else []) + [change.diff() for change in changes]
    return result


def build_module():
    return ansible_module(
        AnsibleModule,
        argument_spec={
            "max_per_core": {"type": "int", "default": 32768},
            "min": {"type": "int", "default": 131072},
            "max": {"type": "int"},
            "hashsize": {"type": "int"},
            "tcp_timeout_established": {"type": "int", "default": 86400},
            "tcp_timeout_close_wait": {"type": "int", "default": 3600},
            "file": {"type": "path", "default": "/etc/sysctl.d/90-kubeipvs-conntrack.conf"},
            "modules_load_file": {"type": "path", "default": "/etc/modules-load.d/kubeipvs-node.conf"},
            "modprobe_file": {"type": "path", "default": "/etc/modprobe.d/kubeipvs-node.conf"},
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), ensure_conntrack)


if __name__ == "__main__":
    main()
