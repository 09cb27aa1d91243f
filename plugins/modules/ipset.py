#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipset
short_description: Manage ipsets (type, options and members) atomically, one or many per call
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Creates, updates or destroys one ipset (O(name)) or many (O(sets)) with the C(ipset) tool.
  - Reads the sets once (C(ipset save NAME) for one set, C(ipset save) for many), computes the
    difference in memory and applies only the changes, for all sets together, in one
    C(ipset restore -exist) batch.
  - Large member changes (more than O(swap_threshold) additions plus removals) and option
    changes are built in a temporary set and swapped in with C(ipset swap), so readers never see a
    half-filled set. Smaller changes are added and removed in place.
  - Entries are normalised to the form C(ipset save) prints before they are compared, for example
    C(10.96.0.10,80) becomes C(10.96.0.10,tcp:80) and C(2001:db8:0::1/128) becomes C(2001:db8::1).
    Every entry of every set is validated before anything changes.
  - Destroying a set that iptables rules still reference fails with the referencing rules listed
    and changes nothing; so does destroying or re-creating a set the kernel counts references to.
  - A set whose type changes is built whole under a scratch name before the old one is renamed
    aside and destroyed, so nothing is destroyed before its replacement exists. Where C(unshare)
    exists, the types and options of new sets are tried in a scratch network namespace first. If the
    kernel still refuses a line of the batch, what the batch applied before it is undone.
  - Every member and option is whitelisted first (no control characters, interface names for
    C(hash:net,iface), marks 0-0xffffffff, O(hashsize) and O(maxelem) at least 1, ascending ranges).
extends_documentation_fragment:
  - kubeipvs.node.state_src
  - kubeipvs.node.attributes
options:
  name:
    description:
      - Name of the set (at most 31 characters).
      - One of O(name) and O(sets) is required.
    type: str
  sets:
    description:
      - Many sets in one call, each described by the same keys as the single-set options.
      - A key a set leaves out takes the value of the top-level option of the same name
        (O(type), O(family), O(hashsize), O(maxelem), O(range), O(comment), O(timeout),
        O(exclusive), O(state)); O(swap_threshold) and O(diff_limit) apply to every set.
      - All sets are validated first (duplicate names, types, ranges, every member); one invalid
        set fails the task and nothing is changed.
      - Mutually exclusive with O(name), O(members) and O(members_file).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the set (at most 31 characters).
        type: str
        required: true
      type:
        description: Set type (see the top-level O(type)).
        type: str
        choices: &set_types
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
      hashsize:
        description: Initial hash size of hash sets.
        type: int
      maxelem:
        description: Maximum number of members of hash sets.
        type: int
      range:
        description: Range of bitmap sets.
        type: str
      comment:
        description: Create the set with the comment extension.
        type: bool
      timeout:
        description: Default timeout in seconds of the set's members.
        type: int
      members:
        description: Members of the set (mutually exclusive with O(sets[].members_file)).
        type: list
        elements: str
      members_file:
        description: Path on the node of a file with one member per line.
        type: path
      exclusive:
        description: Remove members that are not listed.
        type: bool
      state:
        description: Whether the set exists.
        type: str
        choices: [present, absent]
  type:
    description:
      - Set type, for example V(hash:ip), V(hash:ip,port), V(hash:ip,port,ip), V(hash:ip,port,net),
        V(hash:net), V(bitmap:port).
      - Required when O(state=present).
    type: str
    choices: *set_types
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
    description: How many added and removed members the diff shows per set (the counts are always shown).
    type: int
    default: 50
  state:
    description: Whether the set exists.
    type: str
    choices: [present, absent]
    default: present
notes:
  - O(state_src) may hold O(sets).
  - Requires the C(ipset) tool on the node. Sets live in the network namespace the module runs in.
"""

EXAMPLES = r"""
- name: Ensure kube-proxy's loop-back set exists without touching its members
  kubeipvs.node.ipset:
    name: KUBE-LOOP-BACK
    type: hash:ip,port,ip
    hashsize: 1024
    maxelem: 65536

- name: Ensure several sets in one call (one read, one restore batch)
  kubeipvs.node.ipset:
    hashsize: 1024
    maxelem: 65536
    sets:
      - name: KUBE-CLUSTER-IP
        type: hash:ip,port
      - name: KUBE-6-CLUSTER-IP
        type: hash:ip,port
        family: inet6
      - name: KUBE-NODE-PORT-TCP
        type: bitmap:port
        range: 0-65535
      - name: EDGE-OLD
        state: absent

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
  returned: when O(name) is used
  type: str
  sample: swap
added_count:
  description: Members added (over all sets).
  returned: always
  type: int
  sample: 1200
removed_count:
  description: Members removed (over all sets).
  returned: always
  type: int
  sample: 3
members_count:
  description: Members in the set after the run (0 when absent).
  returned: when O(name) is used
  type: int
  sample: 100000
reasons:
  description: Why the set is re-created or swapped.
  returned: when O(name) is used
  type: list
  elements: str
  sample: ["options differ: maxelem"]
sets:
  description: One result per set, in the order given.
  returned: always
  type: list
  elements: dict
  sample:
    - name: KUBE-CLUSTER-IP
      changed: true
      method: create
      added_count: 0
      removed_count: 0
      members_count: 0
      reasons: ["set is missing"]
changed_sets:
  description: Names of the sets that were (or in check mode would be) changed.
  returned: always
  type: list
  elements: str
  sample: [KUBE-CLUSTER-IP, KUBE-6-CLUSTER-IP]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import read_text
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipset import Ipsets
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _ipset as ipset_lib
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._results import many_diff


def ensure_sets(module):
    params = module.params
    single = params["sets"] is None
    desired = ipset_lib.validate_all(ipset_lib.merge_set_specs(params), single, read_text)
    ipsets = Ipsets(Commands.of(module))

    current = ipsets.read([wanted.name for wanted in desired])
    plans = {wanted.name: ipset_lib.plan_one(wanted, current[wanted.name], params["swap_threshold"])
             for wanted in desired}
    ipsets.check_types(ipset_lib.new_types(desired, plans, current))
    ipset_lib.check_capacity(desired, plans)
    actions = ipset_lib.destructive_actions(desired, plans, current)
    ipsets.refuse_if_referenced(actions)
    ipsets.refuse_if_in_use(actions)
    ipsets.probe_headers(ipset_lib.new_headers(desired, plans))
    batch = ipset_lib.batch_of(desired, plans, current)
    if batch.chunks and not module.check_mode:
        for warning in ipsets.restore(batch, swapped=[name for name, plan in plans.items() if plan.method == "swap"]):
            module.warn(warning)

    results, described = [], []
    for wanted in desired:
        plan = plans[wanted.name]
        header, members = current[wanted.name]
        one, after_header = ipset_lib.set_result(wanted, plan, header)
        results.append(one)
        if module._diff and (single or plan.changed):
            limit = params["diff_limit"]
            described.append((f"ipset {wanted.name}",
                              ipset_lib.describe(header, len(members), plan.remove_set, "removed", limit),
                              ipset_lib.describe(after_header, one["members_count"], plan.add_set, "added", limit)))
    result = {
        "changed": any(one["changed"] for one in results),
        "added_count": sum(one["added_count"] for one in results),
        "removed_count": sum(one["removed_count"] for one in results),
        "sets": results,
        "changed_sets": [one["name"] for one in results if one["changed"]],
    }
    if single:
        result.update({key: results[0][key] for key in ("method", "members_count", "reasons")})
    if module._diff:
        result["diff"] = many_diff(described, len(results), single, "ipsets", "sets")
    return result


SET_OPTIONS = {
    "type": {"type": "str", "choices": list(ipset_lib.SET_TYPES)},
    "family": {"type": "str", "choices": ["inet", "inet6"]},
    "hashsize": {"type": "int"},
    "maxelem": {"type": "int"},
    "range": {"type": "str"},
    "comment": {"type": "bool"},
    "timeout": {"type": "int"},
    "members": {"type": "list", "elements": "str"},
    "members_file": {"type": "path"},
    "exclusive": {"type": "bool"},
    "state": {"type": "str", "choices": ["present", "absent"]},
}


def build_module():
    return state_module(
        AnsibleModule,
        state_options=("sets",),
        argument_spec={
            "name": {"type": "str"},
            "sets": {
                "type": "list",
                "elements": "dict",
                "options": dict(SET_OPTIONS, name={"type": "str", "required": True}),
                "mutually_exclusive": [("members", "members_file")],
            },
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
        mutually_exclusive=[
            ("members", "members_file"),
            ("name", "sets"),
            ("members", "sets"),
            ("members_file", "sets"),
        ],
        required_one_of=[("name", "sets")],
        supports_check_mode=True,
    )


def main():
    run_module(build_module(), ensure_sets)


if __name__ == "__main__":
    main()
