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
    and changes nothing.
extends_documentation_fragment:
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
    description: How many added and removed members the diff shows per set (the counts are always shown).
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

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _ipset as ipset_lib
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import OF_INET

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


class DesiredSet:
    """One validated set spec: what the set should look like."""

    def __init__(self, name, state, header=None, members=None, exclusive=False):
        self.name = name
        self.state = state
        self.header = header
        self.members = members if members is not None else set()
        self.exclusive = exclusive


def read_sets(module, ipset_bin, names):
    """{name: (header or None, members)}: ``ipset save NAME`` for one set, one ``ipset save`` for many."""
    if len(names) == 1:
        name = names[0]
        rc, out, err = run(module, [ipset_bin, "save", name])
        if rc != 0:
            if NOT_FOUND in err:
                return {name: (None, set())}
            raise KubeIpvsError(f"ipset save {name} failed: {err.strip()}", rc=rc)
        return {name: ipset_lib.parse_save(out, name)}
    rc, out, err = run(module, [ipset_bin, "save"])
    if rc != 0:
        raise KubeIpvsError(f"ipset save failed: {err.strip()}", rc=rc)
    return ipset_lib.parse_save_all(out, names)


def find_references(module, names):
    """{name: rules} for the sets that rules in any iptables backend and family match by name."""
    references = {}
    for tool in SAVE_TOOLS:
        path = module.get_bin_path(tool)
        if not path:
            continue
        rc, out, _err = run(module, [path])
        if rc == 0:
            for name in names:
                rules = [f"{tool} {rule}" for rule in ipset_lib.referencing_rules(out, name)]
                if rules:
                    references.setdefault(name, []).extend(rules)
    return references


def refuse_if_referenced(module, actions):
    """Fail, changing nothing, when iptables still uses a set that would be destroyed.

    ``actions`` maps set names to what would be done to them ("destroy", "re-create ...").
    """
    if not actions:
        return
    references = find_references(module, list(actions))
    if not references:
        return
    problems = [
        "cannot {} set {}: iptables rules still reference it; remove them first: {}".format(
            actions[name], name, "; ".join(rules)
        )
        for name, rules in references.items()
    ]
    raise KubeIpvsError(
        " | ".join(problems), referencing_rules=[rule for rules in references.values() for rule in rules]
    )


def desired_members(spec, set_type, family, port_range):
    entries = spec["members"] or []
    path = spec["members_file"]
    if spec["members"] is not None and path:
        raise KubeIpvsError("members and members_file are mutually exclusive")
    if path:
        if not os.path.isfile(path):
            raise KubeIpvsError(f"members_file {path} does not exist on the node")
        with open(path, encoding="utf-8") as handle:
            entries = ipset_lib.read_members_file(handle.read())
    return ipset_lib.normalise_entries(entries, set_type, family, port_range)


def desired_set(spec):
    """Validate one set spec completely (name, type, range, every member) into a DesiredSet."""
    name = spec["name"]
    ipset_lib.validate_name(name)
    if spec["state"] == "absent":
        return DesiredSet(name, "absent")
    set_type = spec["type"]
    if not set_type:
        raise KubeIpvsError("type is required when state=present")
    if set_type not in ipset_lib.SET_TYPES:
        raise KubeIpvsError("type {} is not one of {}".format(set_type, ", ".join(ipset_lib.SET_TYPES)))
    family = OF_INET[spec["family"]]
    port_range = (
        ipset_lib.parse_range(spec["range"], set_type)
        if spec["range"] is not None
        else ((0, 65535) if set_type == "bitmap:port" else None)
    )
    if set_type != "bitmap:port" and set_type != "bitmap:ip" and spec["range"] is not None:
        raise KubeIpvsError(f"range only applies to bitmap sets, not {set_type}")
    header = ipset_lib.desired_header(
        set_type, family, spec["hashsize"], spec["maxelem"], port_range, spec["comment"], spec["timeout"]
    )
    members = desired_members(spec, set_type, family, port_range)
    return DesiredSet(name, "present", header, members, spec["exclusive"])


def validate_all(specs, single):
    """Every spec validated before anything is read or changed; all problems reported at once."""
    if single:
        return [desired_set(specs[0])]
    problems = []
    duplicates = ipset_lib.duplicate_names(spec["name"] for spec in specs)
    if duplicates:
        problems.append("set names listed more than once: {}".format(", ".join(duplicates)))
    desired = []
    for index, spec in enumerate(specs):
        try:
            desired.append(desired_set(spec))
        except KubeIpvsError as error:
            problems.append(f"sets[{index}] ({spec['name']}): {error.msg}")
    if problems:
        raise KubeIpvsError(
            "{} problem(s) in sets; nothing was changed: {}".format(len(problems), " | ".join(problems)),
            problems=problems,
        )
    return desired


def check_types_supported(module, ipset_bin, set_types):
    if not set_types:
        return
    _rc, out, _err = run(module, [ipset_bin, "help"])
    known = ipset_lib.parse_kernel_types(out)
    unknown = sorted(set_type for set_type in set_types if known and set_type not in known)
    if unknown:
        raise KubeIpvsError(
            "set type {} is not supported by the ipset tool on this node (it knows: {})".format(
                ", ".join(unknown), ", ".join(sorted(known))
            )
        )


def plan_one(wanted, current, swap_threshold):
    header, members = current
    if wanted.state == "absent":
        return ipset_lib.SetPlan("destroy" if header else "none", to_remove=members)
    return ipset_lib.plan_set(wanted.header, wanted.members, header, members, wanted.exclusive, swap_threshold)


def apply_batch(module, ipset_bin, batch, plans):
    text = batch.text
    rc, _out, err = run(module, [ipset_bin, "restore", "-exist"], data=text)
    if rc == 0:
        return
    # A swap that died half-way leaves its scratch set behind: remove it (absent ones just fail).
    for name, plan in plans.items():
        if plan.method == "swap":
            run(module, [ipset_bin, "destroy", ipset_lib.temporary_set_name(name)])
    message = err.strip()
    if IN_USE in message:
        message += (
            " (a kernel component such as an iptables rule in another backend, a list:set set or "
            "another network namespace's rule still holds the set)"
        )
    line = ipset_lib.failed_line(message)
    located = batch.locate(line) if line else None
    if located is None and len(batch.chunks) == 1:
        located = (batch.chunks[0][0], batch.chunks[0][1], [])
    if located is None:
        raise KubeIpvsError(f"ipset restore failed: {message}", rc=rc, batch_head=text.splitlines()[:5])
    name, method, applied = located
    if applied:
        message += "; the changes to {} (before it in the batch) were applied".format(", ".join(applied))
    raise KubeIpvsError(
        f"ipset restore for set {name} failed ({method}): {message}", rc=rc, batch_head=text.splitlines()[:5]
    )


def set_result(wanted, plan, header):
    after_header = None
    if wanted.state == "present":
        after_header = wanted.header if plan.method in ("create", "swap", "recreate") else header
    return {
        "name": wanted.name,
        "changed": plan.changed,
        "method": plan.method,
        "added_count": len(plan.add_set),
        "removed_count": len(plan.remove_set),
        "members_count": len(plan.final_set) if after_header else 0,
        "reasons": plan.reasons,
    }, after_header


def ensure_sets(module):
    params = module.params
    single = params["sets"] is None
    specs = ipset_lib.merge_set_specs(params)
    desired = validate_all(specs, single)
    ipset_bin = module.get_bin_path("ipset", required=True)
    limit = params["diff_limit"]

    current = read_sets(module, ipset_bin, [wanted.name for wanted in desired])
    plans = {wanted.name: plan_one(wanted, current[wanted.name], params["swap_threshold"]) for wanted in desired}
    check_types_supported(
        module,
        ipset_bin,
        {
            wanted.header["type"]
            for wanted in desired
            if plans[wanted.name].method in ("create", "swap", "recreate")
            and (current[wanted.name][0] is None or current[wanted.name][0]["type"] != wanted.header["type"])
        },
    )
    actions = {}
    for wanted in desired:
        method = plans[wanted.name].method
        if method == "destroy":
            actions[wanted.name] = "destroy"
        elif method == "recreate":
            actions[wanted.name] = "re-create (type {} -> {})".format(
                current[wanted.name][0]["type"], wanted.header["type"]
            )
    refuse_if_referenced(module, actions)

    batch = ipset_lib.Batch()
    for wanted in desired:
        plan = plans[wanted.name]
        if plan.changed:
            header = wanted.header if wanted.state == "present" else current[wanted.name][0]
            batch.add(wanted.name, plan.method, ipset_lib.render_batch(wanted.name, header, plan))
    if batch.chunks and not module.check_mode:
        apply_batch(module, ipset_bin, batch, {name: plan for name, plan in plans.items() if plan.changed})

    results, described = [], []
    for wanted in desired:
        plan = plans[wanted.name]
        header, members = current[wanted.name]
        one, after_header = set_result(wanted, plan, header)
        results.append(one)
        if module._diff and (single or plan.changed):
            described.append(
                (
                    wanted.name,
                    ipset_lib.describe(header, len(members), plan.remove_set, "removed", limit),
                    ipset_lib.describe(after_header, one["members_count"], plan.add_set, "added", limit),
                )
            )
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
        result["diff"] = diff_of(described, len(results), single)
    return result


def diff_of(described, total, single):
    """One set: its own before/after. Many: the changed sets, each under a heading, and a count of the rest."""
    if single:
        name, before, after = described[0]
        return {"before_header": f"ipset {name}", "after_header": f"ipset {name}", "before": before, "after": after}
    unchanged = f"# {total - len(described)} of {total} sets unchanged\n"
    return {
        "before_header": "ipsets",
        "after_header": "ipsets",
        "before": "".join(f"# ipset {name}\n{before}" for name, before, _after in described) + unchanged,
        "after": "".join(f"# ipset {name}\n{after}" for name, _before, after in described) + unchanged,
    }


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


def main():
    module = AnsibleModule(
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
    run_module(module, ensure_sets)


if __name__ == "__main__":
    main()
