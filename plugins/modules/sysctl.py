#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctl
short_description: Set kernel parameters live and persist them in a drop-in the collection owns
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Writes O(settings) to C(/proc/sys) and persists them in O(file), a drop-in under
    C(/etc/sysctl.d/) whose whole content this module owns (other keys in it are removed).
  - Values are compared the way the kernel prints them; vectors such as
    C(net.ipv4.ip_local_port_range) are given space separated or as a list. A key whose current
    value is numeric only accepts integers, as many as the kernel prints.
  - Keys that exist only once a kernel module is loaded (C(net.ipv4.vs.*) needs C(ip_vs),
    C(net.netfilter.*) and C(net.nf_conntrack_max) need C(nf_conntrack), C(net.bridge.*) needs
    C(br_netfilter)) fail with the module to load, unless O(require_modules=true), which loads the
    module and lists it in O(modules_load_file) so systemd-modules-load loads it at boot before
    systemd-sysctl applies the drop-in.
  - Every key and value is checked before anything is changed; an unknown key fails. C(net.*)
    values are tried in a scratch network namespace first (with C(unshare)), and when a later step
    still fails, the values written, the file and the modules loaded by this call are put back.
  - Warns when a later file in the sysctl.d search path sets one of the keys to another value at boot.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  settings:
    description:
      - Keys (dotted, or with C(/) separators when a component contains a dot) and their values.
        Booleans become V(1)/V(0), lists become space-separated vectors.
      - Required with O(state=present).
    type: dict
  file:
    description:
      - The owned drop-in; a C(.conf) file directly under C(/etc/sysctl.d/). Use one file per set
        of settings that belongs together.
    type: path
    default: /etc/sysctl.d/90-kubeipvs-node.conf
  state:
    description:
      - V(present) sets the values live (see O(apply)) and writes O(file) with exactly O(settings).
      - V(absent) removes O(file); live values stay as they are until the next boot.
    type: str
    choices: [present, absent]
    default: present
  persist:
    description:
      - With V(false), set the values in the running kernel only (they last until the next boot or
        the next change) and leave every file alone - O(file), O(modules_load_file) and the
        warnings about boot persistence do not apply. For a value a procedure needs for a while,
        such as the mode switch's hold on IPVS connections.
    type: bool
    default: true
  apply:
    description:
      - Also set the values in the running kernel. With V(false) only O(file) is written (O(require_modules)
        still loads modules, because a key must exist to validate its value).
    type: bool
    default: true
  require_modules:
    description:
      - Load the kernel modules module-dependent keys need and add them to O(modules_load_file)
        (boot persistence). With V(false), such a key fails when its module is not loaded, and a
        warning says when the module is not loaded at boot.
    type: bool
    default: false
  modules_load_file:
    description:
      - The owned modules-load.d drop-in O(require_modules) adds modules to (shared with
        M(kubeipvs.node.kernel_module)).
    type: path
    default: /etc/modules-load.d/kubeipvs-node.conf
seealso:
  - module: kubeipvs.node.kernel_module
  - module: kubeipvs.node.conntrack
"""

EXAMPLES = r"""
- name: Sysctls kube-proxy IPVS mode needs, loading ip_vs and br_netfilter now and at boot
  kubeipvs.node.sysctl:
    file: /etc/sysctl.d/90-kubeipvs-node.conf
    require_modules: true
    settings:
      net.ipv4.ip_forward: 1
      net.ipv4.vs.conntrack: 1
      net.ipv4.vs.expire_nodest_conn: 1
      net.ipv4.vs.expire_quiescent_template: 1
      net.bridge.bridge-nf-call-iptables: 1

- name: A vector value
  kubeipvs.node.sysctl:
    file: /etc/sysctl.d/91-ports.conf
    settings:
      net.ipv4.ip_local_port_range: [32768, 60999]

- name: Forget the drop-in (live values stay until reboot)
  kubeipvs.node.sysctl:
    file: /etc/sysctl.d/91-ports.conf
    state: absent
"""

RETURN = r"""
values:
  description: Per key, the value the kernel printed before and the value after the run (or planned, in check mode).
    C(before) is null for a key whose module was not loaded yet.
  returned: always
  type: dict
  sample: {net.ipv4.ip_forward: {before: "0", after: "1"}}
file:
  description: The owned drop-in (null with O(persist=false)).
  returned: always
  type: str
  sample: /etc/sysctl.d/90-kubeipvs-node.conf
modules_loaded:
  description: Kernel modules loaded (or to be loaded, in check mode) for module-dependent keys.
  returned: always
  type: list
  elements: str
  sample: [br_netfilter]
"""

import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import apply_file, plan_file
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import (
    DEFAULT_MODPROBE_FILE,
    KernelModules,
    modprobe_for,
    plan_persistence,
    record_loads,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._sysctl import Sysctl, apply_writes, probe_in_scratch
from ansible_collections.kubeipvs.node.plugins.module_utils.node._undo import Undo
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import validate_owned_path
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import (
    key_parts,
    missing_keys,
    plan_live,
    render_dropin,
    required_module,
    value_text,
)


def check_module_keys(kmods, sysctl, settings, require_modules):
    """Modules to load for keys /proc/sys does not show yet; fails for keys nothing provides."""
    by_module, unknown = missing_keys(sysctl, settings)
    if unknown:
        raise KubeIpvsError(
            "unknown sysctl key(s) " + ", ".join(unknown) + ": not in /proc/sys and no kernel module provides them",
            unknown_keys=unknown,
        )
    for name, keys in by_module.items():
        real_name, _kind = kmods.resolve(name)
        if kmods.is_present(real_name):
            raise KubeIpvsError(
                f"unknown sysctl key(s) {', '.join(keys)}: kernel module {name} is loaded but does not provide them",
                unknown_keys=keys,
            )
        if not require_modules:
            raise KubeIpvsError(
                f"sysctl {', '.join(keys)} exists only once kernel module {name} is loaded: load it first"
                f" (kubeipvs.node.kernel_module name={name}) or set require_modules: true",
                missing_module=name,
            )
    return sorted(by_module)


def ensure_sysctl(module, root="/"):
    params = module.params
    validate_owned_path(params["file"], "/etc/sysctl.d", "file")
    validate_owned_path(params["modules_load_file"], "/etc/modules-load.d", "modules_load_file")
    if params["state"] == "absent":
        if not params["persist"]:
            raise KubeIpvsError("state: absent removes the drop-in; persist: false has no file to remove")
        change = plan_file(root, params["file"], None)
        if change.changed and not module.check_mode:
            apply_file(root, change)
        result = {"changed": change.changed, "values": {}, "file": params["file"], "modules_loaded": []}
        if module._diff:
            result["diff"] = [change.diff()] if change.changed else []
        return result

    if not params["persist"] and not params["apply"]:
        raise KubeIpvsError("persist: false with apply: false would change nothing; give one of them true")
    settings = params["settings"] or {}
    if not settings:
        raise KubeIpvsError("settings must name at least one key with state=present")
    for key, value in settings.items():
        key_parts(key)
        if value is None or "\n" in str(value):
            raise KubeIpvsError(f"sysctl {key}: the value must be one line, got {value!r}")
        value_text(value, key)

    sysctl = Sysctl(root)
    kmods = KernelModules(root)
    to_load = check_module_keys(kmods, sysctl, settings, params["require_modules"])
    # Validate every key that exists now before the first change (loading a module).
    plan_live(sysctl, {k: v for k, v in settings.items() if required_module(k) not in to_load}, params["apply"])
    undo = Undo()
    return undo.run(lambda: converge(module, root, sysctl, kmods, settings, to_load, undo))


def converge(module, root, sysctl, kmods, settings, to_load, undo):
    """Load the modules, plan, try the values in a scratch namespace, then write; every step records in
    ``undo`` how to put back what it changed, so a failure leaves the node as it was."""
    params = module.params
    warnings = []
    if to_load and not module.check_mode:
        modprobe = modprobe_for(module)
        record_loads(undo, kmods, Commands.of(module).run, module.get_bin_path)
        for name in to_load:
            modprobe.load(name)
        warnings.extend(modprobe.warnings)
        by_module, unknown = missing_keys(sysctl, settings)
        if by_module or unknown:
            raise KubeIpvsError(
                "unknown sysctl key(s) " + ", ".join(unknown + [key for keys in by_module.values() for key in keys])
                + f": still absent after loading {', '.join(to_load)}",
            )

    plan, wanted = plan_live(sysctl, settings, params["apply"])
    persist = params["persist"]
    if plan.writes and root == "/":
        probe_in_scratch(Commands.of(module), sys.executable, plan.writes)
    changes = [plan_file(root, params["file"], render_dropin(wanted, "sysctl"))] if persist else []
    needed = sorted({required_module(k) for k in settings} - {None})
    if not persist:
        pass
    elif params["require_modules"]:
        loadable = [name for name in needed if name not in kmods.builtin()]
        changes.extend(plan_persistence(kmods, params["modules_load_file"], DEFAULT_MODPROBE_FILE, loadable, (), {}))
    else:
        at_boot = kmods.boot_modules() | kmods.builtin()
        for name in needed:
            if name not in at_boot:
                keys = ", ".join(k for k in settings if required_module(k) == name)
                warnings.append(
                    f"{keys} need(s) kernel module {name}, which nothing loads at boot: systemd-sysctl will skip"
                    f" them. Persist {name} (kubeipvs.node.kernel_module) or set require_modules: true"
                )
    changes = [change for change in changes if change.changed]
    if persist:
        warnings.extend(sysctl.shadowing(params["file"], wanted))

    if not module.check_mode:
        apply_writes(sysctl, plan.writes, changes, root, move=module.atomic_move, undo=undo)
    for warning in warnings:
        module.warn(warning)

    result = {
        "changed": bool(to_load or plan.writes or changes),
        "values": {key: {"before": plan.before[key], "after": plan.after[key]} for key in settings},
        "file": params["file"] if persist else None,
        "modules_loaded": to_load,
    }
    if module._diff:
        result["diff"] = ([plan.live_diff()] if plan.writes else []) + [change.diff() for change in changes]
    return result


def build_module():
    return ansible_module(
        AnsibleModule,
        argument_spec={
            "settings": {"type": "dict"},
            "file": {"type": "path", "default": "/etc/sysctl.d/90-kubeipvs-node.conf"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "apply": {"type": "bool", "default": True},
            "persist": {"type": "bool", "default": True},
            "require_modules": {"type": "bool", "default": False},
            "modules_load_file": {"type": "path", "default": "/etc/modules-load.d/kubeipvs-node.conf"},
        },
        required_if=[("state", "present", ["settings"])],
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), ensure_sysctl)


if __name__ == "__main__":
    main()
