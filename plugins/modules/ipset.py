#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipset
short_description: Manage one ipset (type, options and members) atomically
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Creates, updates or destroys one ipset with the C(ipset) tool.
  - Reads the set once with C(ipset save NAME), computes the difference in memory and applies
    only the changes in one C(ipset restore -exist) batch.
  - Large member changes (more than O(swap_threshold) additions plus removals) and option
    changes are built in a temporary set and swapped in with C(ipset swap), so readers never see a
    half-filled set. Smaller changes are added and removed in place.
  - Entries are normalised to the form C(ipset save) prints before they are compared, for example
    C(10.96.0.10,80) becomes C(10.96.0.10,tcp:80) and C(2001:db8:0::1/128) becomes C(2001:db8::1).
    Every entry is validated before anything changes.
  - Destroying a set that iptables rules still reference fails with the referencing rules listed
    and changes nothing.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  name:
    description: Name of the set (at most 31 characters).
    type: str
    required: true
  type:
    description:
      - Set type, for example V(hash:ip), V(hash:ip,port), V(hash:ip,port,ip), V(hash:ip,port,net),
        V(hash:net), V(bitmap:port).
      - Required when O(state=present).
    type: str
    choices:
      - hash:ip
      - hash:net
      - hash:mac
      - "hash:ip,port"
      - "hash:ip,mark"
      - "hash:net,port"
      - "hash:net,iface"
      - "hash:net,net"
      - "hash:ip,port,ip"
      - "hash:ip,port,net"
      - "hash:net,port,net"
      - bitmap:port
      - bitmap:ip
  family:
    description: Address family of hash sets.
    type: str
    choices: [inet, inet6]
    default: inet
  hashsize:
    description:
      - Initial hash size of hash sets (the kernel rounds it up to a power of two).
      - Treated as a minimum when comparing, because the kernel grows the hash as the set fills.
    type: int
    default: 1024
  maxelem:
    description: Maximum number of members of hash sets.
    type: int
    default: 65536
  range:
    description: Range of bitmap sets, for example V(0-65535) for V(bitmap:port).
    type: str
  comment:
    description: Create the set with the comment extension.
    type: bool
    default: false
  timeout:
    description: Default timeout in seconds of the set's members; creates the set with timeout support.
    type: int
  members:
    description:
      - Members in the form the ipset tool accepts (V(10.96.0.10,tcp:80), V(10.96.0.10,80),
        V(30080)).
      - Mutually exclusive with O(members_file).
    type: list
    elements: str
  members_file:
    description:
      - Path on the node of a file with one member per line (blank lines and C(#) comments ignored);
        meant for 100k+ members that should not travel through module arguments.
    type: path
  exclusive:
    description:
      - Remove members that are not listed. When V(false) members are only added.
    type: bool
    default: false
  swap_threshold:
    description:
      - Member changes (additions plus removals) above which the set is rebuilt in a temporary set
        and swapped in atomically instead of being changed in place.
    type: int
    default: 1000
  diff_limit:
    description: How many added and removed members the diff shows (the counts are always shown).
    type: int
    default: 50
  state:
    description: Whether the set exists.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Requires the C(ipset) tool on the node. Sets live in the network namespace the module runs in.
"""

EXAMPLES = r"""
- name: Ensure kube-proxy's loop-back set exists without touching its members
  kubeipvs.node.ipset:
    name: KUBE-LOOP-BACK
    type: hash:ip,port,ip
    hashsize: 1024
    maxelem: 65536

- name: Own the exact membership of a set
  kubeipvs.node.ipset:
    name: EDGE-ALLOWED
    type: hash:net
    members:
      - 10.0.0.0/8
      - 192.168.10.5
    exclusive: true

- name: Replace 100k members atomically from a file on the node
  kubeipvs.node.ipset:
    name: EDGE-BLOCKLIST
    type: hash:ip
    maxelem: 262144
    members_file: /var/lib/edge/blocklist.txt
    exclusive: true

- name: Remove a set (fails, naming the rules, while iptables still uses it)
  kubeipvs.node.ipset:
    name: EDGE-OLD
    state: absent
"""

RETURN = r"""
method:
  description: How the change was (or would be) made.
  returned: always
  type: str
  sample: swap
added_count:
  description: Members added.
  returned: always
  type: int
  sample: 1200
removed_count:
  description: Members removed.
  returned: always
  type: int
  sample: 3
members_count:
  description: Members in the set after the run (0 when absent).
  returned: always
  type: int
  sample: 100000
reasons:
  description: Why the set is re-created or swapped.
  returned: always
  type: list
  elements: str
  sample: ["options differ: maxelem"]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils import _ipset as ipset_lib
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module

NOT_FOUND = "does not exist"
IN_USE = "in use by a kernel component"
SAVE_TOOLS = (
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-save",
    "ip6tables-save",
)


def run(module, argv, data=None):
    return module.run_command(argv, data=data, binary_data=True, environ_update={"LC_ALL": "C"})


def read_set(module, ipset_bin, name):
    rc, out, err = run(module, [ipset_bin, "save", name])
    if rc != 0:
        if NOT_FOUND in err:
            return None, set()
        raise KubeIpvsError(f"ipset save {name} failed: {err.strip()}", rc=rc)
    return ipset_lib.parse_save(out, name)


def find_references(module, name):
    """Rules in every iptables backend and family that match the set by name."""
    rules = []
    for tool in SAVE_TOOLS:
        path = module.get_bin_path(tool)
        if not path:
            continue
        rc, out, _err = run(module, [path])
        if rc == 0:
            rules += [f"{tool} {rule}" for rule in ipset_lib.referencing_rules(out, name)]
    return rules


def refuse_if_referenced(module, name, action):
    rules = find_references(module, name)
    if rules:
        raise KubeIpvsError(
            "cannot {} set {}: iptables rules still reference it; remove them first: {}".format(
                action, name, "; ".join(rules)
            ),
            referencing_rules=rules,
        )


def desired_members(module, params, set_type, family, port_range):
    entries = params["members"] or []
    path = params["members_file"]
    if path:
        if not os.path.isfile(path):
            raise KubeIpvsError(f"members_file {path} does not exist on the node")
        with open(path, encoding="utf-8") as handle:
            entries = ipset_lib.read_members_file(handle.read())
    return ipset_lib.normalise_entries(entries, set_type, family, port_range)


def check_type_supported(module, ipset_bin, set_type):
    _rc, out, _err = run(module, [ipset_bin, "help"])
    known = ipset_lib.parse_kernel_types(out)
    if known and set_type not in known:
        raise KubeIpvsError(
            "set type {} is not supported by the ipset tool on this node (it knows: {})".format(
                set_type, ", ".join(sorted(known))
            )
        )


def apply_batch(module, ipset_bin, name, plan, batch):
    scratch = ipset_lib.temporary_set_name(name)
    rc, _out, err = run(module, [ipset_bin, "restore", "-exist"], data=batch)
    if rc != 0:
        if plan.method == "swap":
            run(module, [ipset_bin, "destroy", scratch])
        message = err.strip()
        if IN_USE in message:
            message += (
                " (a kernel component such as an iptables rule in another backend, a list:set set or "
                "another network namespace's rule still holds the set)"
            )
        raise KubeIpvsError(
            f"ipset restore for set {name} failed ({plan.method}): {message}", rc=rc, batch_head=batch.splitlines()[:5]
        )


def ensure_set(module):
    params = module.params
    name = params["name"]
    ipset_lib.validate_name(name)
    ipset_bin = module.get_bin_path("ipset", required=True)
    limit = params["diff_limit"]

    if params["state"] == "absent":
        header, members = read_set(module, ipset_bin, name)
        plan = ipset_lib.SetPlan("destroy" if header else "none", to_remove=members)
        if plan.changed:
            refuse_if_referenced(module, name, "destroy")
            if not module.check_mode:
                apply_batch(module, ipset_bin, name, plan, ipset_lib.render_batch(name, header, plan))
        after_header = None
    else:
        set_type = params["type"]
        if not set_type:
            raise KubeIpvsError("type is required when state=present")
        family = params["family"]
        port_range = (
            ipset_lib.parse_range(params["range"], set_type)
            if params["range"] is not None
            else ((0, 65535) if set_type == "bitmap:port" else None)
        )
        if set_type != "bitmap:port" and set_type != "bitmap:ip" and params["range"] is not None:
            raise KubeIpvsError(f"range only applies to bitmap sets, not {set_type}")
        header_wanted = ipset_lib.desired_header(
            set_type, family, params["hashsize"], params["maxelem"], port_range, params["comment"], params["timeout"]
        )
        members_wanted = desired_members(module, params, set_type, family, port_range)
        header, members = read_set(module, ipset_bin, name)
        plan = ipset_lib.plan_set(
            header_wanted, members_wanted, header, members, params["exclusive"], params["swap_threshold"]
        )
        if plan.method in ("create", "swap", "recreate") and (header is None or header["type"] != set_type):
            check_type_supported(module, ipset_bin, set_type)
        if plan.method == "recreate":
            refuse_if_referenced(module, name, "re-create (type {} -> {})".format(header["type"], set_type))
        if plan.changed and not module.check_mode:
            apply_batch(module, ipset_bin, name, plan, ipset_lib.render_batch(name, header_wanted, plan))
        after_header = header_wanted if plan.method in ("create", "swap", "recreate") else header

    result = {
        "changed": plan.changed,
        "method": plan.method,
        "added_count": len(plan.add_set),
        "removed_count": len(plan.remove_set),
        "members_count": len(plan.final_set) if after_header else 0,
        "reasons": plan.reasons,
    }
    if module._diff:
        result["diff"] = {
            "before_header": f"ipset {name}",
            "after_header": f"ipset {name}",
            "before": ipset_lib.describe(header, len(members), plan.remove_set, "removed", limit),
            "after": ipset_lib.describe(after_header, result["members_count"], plan.add_set, "added", limit),
        }
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "type": {"type": "str", "choices": list(ipset_lib.SET_TYPES)},
            "family": {"type": "str", "choices": ["inet", "inet6"], "default": "inet"},
            "hashsize": {"type": "int", "default": 1024},
            "maxelem": {"type": "int", "default": 65536},
            "range": {"type": "str"},
            "comment": {"type": "bool", "default": False},
            "timeout": {"type": "int"},
            "members": {"type": "list", "elements": "str"},
            "members_file": {"type": "path"},
            "exclusive": {"type": "bool", "default": False},
            "swap_threshold": {"type": "int", "default": ipset_lib.SWAP_THRESHOLD},
            "diff_limit": {"type": "int", "default": 50},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        mutually_exclusive=[("members", "members_file")],
        supports_check_mode=True,
    )
    run_module(module, ensure_set)


if __name__ == "__main__":
    main()
