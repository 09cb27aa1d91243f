#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_module
short_description: Load or unload kernel modules, check their parameters and persist them for boot
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Loads (C(modprobe)) or unloads (C(rmmod)) kernel modules of the running kernel and keeps them so
    across reboots through one drop-in in C(/etc/modules-load.d/) and one in C(/etc/modprobe.d/)
    owned by this collection.
  - Knows built-in modules (C(/lib/modules/<release>/modules.builtin)) and reports them as present
    without loading them. C(-) and C(_) in module names are the same, as for modprobe.
  - Compares the wanted O(params) with C(/sys/module/<module>/parameters/) and reports drift; a loaded
    module is only reloaded to change them when O(reload_on_param_change=true).
  - A module that does not exist for the running kernel fails with the kernel release and the
    directory searched, before anything is loaded or written. When a later step fails, the modules
    this call loaded are removed again, those it unloaded loaded again and the files restored.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  name:
    description:
      - Module name or list of names (for example V(ip_vs), V(ip_vs_rr), V(br_netfilter)).
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) loads the modules (built-in ones need nothing), V(absent) unloads them with
        C(rmmod), which removes exactly the named module and leaves its dependencies loaded.
    type: str
    choices: [present, absent]
    default: present
  params:
    description:
      - Module parameters (C(name=value)) to load the module with and to persist as an
        C(options) line in O(modprobe_file). Only with a single O(name).
      - When omitted, the module's C(options) line in O(modprobe_file) is left as it is; V({})
        removes it.
    type: dict
  reload_on_param_change:
    description:
      - Unload and load a loaded module again when its parameters differ from O(params).
        Reloading fails while the module is in use. When V(false), drift is reported and warned about.
    type: bool
    default: false
  persistent:
    description:
      - Add (V(present)) or remove (V(absent)) the modules in O(modules_load_file) and their
        parameters in O(modprobe_file), so the kernel has them from boot on.
      - Both files are owned by the collection; it renders their whole content, and other tasks
        of the collection add their own entries to the same files.
    type: bool
    default: true
  modules_load_file:
    description:
      - The owned drop-in read by systemd-modules-load at boot; a C(.conf) file directly under
        C(/etc/modules-load.d/). Removed when its last entry goes.
    type: path
    default: /etc/modules-load.d/kubeipvs-node.conf
  modprobe_file:
    description:
      - The owned drop-in with C(options) lines; a C(.conf) file directly under C(/etc/modprobe.d/).
        Removed when its last entry goes.
    type: path
    default: /etc/modprobe.d/kubeipvs-node.conf
notes:
  - Built-in modules cannot be unloaded and their parameters can only be set on the kernel command line.
seealso:
  - module: kubeipvs.node.sysctl
  - module: kubeipvs.node.conntrack
"""

EXAMPLES = r"""
- name: Load the IPVS modules and keep them loaded across reboots
  kubeipvs.node.kernel_module:
    name: [ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh, nf_conntrack]

- name: Load ip_vs with a bigger connection table, reloading it if it runs with another size
  kubeipvs.node.kernel_module:
    name: ip_vs
    params:
      conn_tab_bits: 18
    reload_on_param_change: true

- name: Unload the IPVS FTP helper and forget it for boot
  kubeipvs.node.kernel_module:
    name: ip_vs_ftp
    state: absent
"""

RETURN = r"""
kernel_release:
  description: The running kernel's release.
  returned: always
  type: str
  sample: 6.1.0-50-amd64
modules:
  description: Each module after the run (or as it would be, in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Canonical module name (C(_) instead of C(-)).
      type: str
      sample: ip_vs
    state:
      description: V(loaded), V(builtin) or V(absent).
      type: str
      sample: loaded
    params:
      description: Readable parameters as C(/sys/module/<name>/parameters/) prints them.
      type: dict
      sample: {conn_tab_bits: "12"}
drift:
  description: Per module, the parameters whose live value differed from O(params) before the run.
  returned: always
  type: dict
  sample: {ip_vs: {conn_tab_bits: {wanted: "18", current: "12"}}}
files:
  description: The owned drop-ins that were (or would be) changed.
  returned: always
  type: list
  elements: str
  sample: [/etc/modules-load.d/kubeipvs-node.conf]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import apply_file
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import (
    KernelModules,
    apply_module_plan,
    modprobe_for,
    plan_persistence,
    record_loads,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._undo import Undo
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._files import FileChange
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import (
    module_name,
    plan_modules,
    validate_owned_path,
)


def ensure_kernel_modules(module, root="/"):
    params = module.params
    names = [module_name(n) for n in params["name"] if n.strip(" ")]
    if not names:
        raise KubeIpvsError("name must list at least one module")
    if params["params"] is not None and len(names) != 1:
        raise KubeIpvsError("params apply to one module: give a single name with params")
    validate_owned_path(params["modules_load_file"], "/etc/modules-load.d", "modules_load_file")
    validate_owned_path(params["modprobe_file"], "/etc/modprobe.d", "modprobe_file")

    kmods = KernelModules(root)
    plan = plan_modules(kmods, names, params["state"], params["params"], params["reload_on_param_change"])
    file_changes = []
    if params["persistent"]:
        loadable = [name for name in plan.before if plan.before[name] != "builtin"]
        if params["state"] == "present":
            options = {} if params["params"] is None else {name: params["params"] for name in loadable}
            file_changes = plan_persistence(
                kmods, params["modules_load_file"], params["modprobe_file"], loadable, (), options
            )
        else:
            file_changes = plan_persistence(
                kmods, params["modules_load_file"], params["modprobe_file"], (), loadable, dict.fromkeys(loadable)
            )
    file_changes = [change for change in file_changes if change.changed]

    warnings = list(plan.warnings)
    if not module.check_mode:
        undo = Undo()

        def apply():
            """Every step first records how to undo itself: a failure leaves the node as it was."""
            if plan.actions:
                modprobe = modprobe_for(module, need_rmmod=params["state"] == "absent" or bool(plan.drift))
                record_loads(undo, kmods, Commands.of(module).run, module.get_bin_path)
                for verb, name, _params in plan.actions:
                    if verb in ("unload", "reload"):
                        undo.record(f"unload of {name}",
                                    lambda name=name: name in kmods.loaded() or modprobe.load(name))
                apply_module_plan(kmods, modprobe, plan)
                warnings.extend(modprobe.warnings)
            for change in file_changes:
                undo.record(change.path, lambda change=change: apply_file(
                    root, FileChange(change.path, change.after, change.before), move=module.atomic_move))
                apply_file(root, change, move=module.atomic_move)

        undo.run(apply)
    for warning in warnings:
        module.warn(warning)

    # In check mode sysfs still shows the old state of the modules the plan would change.
    unapplied = {name for _verb, name, _params in plan.actions} if module.check_mode else set()
    result = {
        "changed": bool(plan.actions or file_changes),
        "kernel_release": kmods.release,
        "modules": [
            {
                "name": name,
                "state": plan.after[name].split(" ")[0],
                "params": {} if plan.after[name] == "absent" or name in unapplied else kmods.params(name),
            }
            for name in plan.after
        ],
        "drift": plan.drift,
        "files": [change.path for change in file_changes],
    }
    if module._diff:
        result["diff"] = ([plan.live_diff()] if plan.actions else []) + [change.diff() for change in file_changes]
    return result


def build_module():
    return ansible_module(
        AnsibleModule,
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "params": {"type": "dict"},
            "reload_on_param_change": {"type": "bool", "default": False},
            "persistent": {"type": "bool", "default": True},
            "modules_load_file": {"type": "path", "default": "/etc/modules-load.d/kubeipvs-node.conf"},
            "modprobe_file": {"type": "path", "default": "/etc/modprobe.d/kubeipvs-node.conf"},
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), ensure_kernel_modules)


if __name__ == "__main__":
    main()
