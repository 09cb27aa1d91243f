#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: iptables_chain
short_description: Declare the whole content of owned iptables chains and the jumps into them
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Makes a user chain (O(chain)), or many (O(chains)), hold exactly the listed rules, in order,
    and makes the listed built-in chains jump to them.
  - Reads each table once with C(iptables-save -t TABLE), compares rules normalised the way
    iptables prints them, and applies all changes to a table in one C(iptables-restore --noflush -w)
    transaction, so it can run beside kube-proxy. Rules of chains it does not own are never touched.
  - Rules the built-in normaliser cannot predict are canonicalised by applying them in a scratch
    network namespace (C(unshare --net)) and reading them back, so a second run changes nothing.
    The same round trip validates the rules; a rule iptables rejects fails the task and nothing
    is applied.
  - A rule that matches an ipset the node does not have fails, except in check mode, where the
    rule is validated against a stand-in set of the same dimension in the scratch namespace (with a
    warning naming the set), because a preceding C(kubeipvs.node.ipset) task only pretended to
    create it.
  - Uses the node's iptables backend (nf_tables or legacy) - the one that already holds C(KUBE-)
    chains, else the one C(iptables) points to.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  table:
    description:
      - Table of the chain.
      - With O(chains), the table of the entries that leave theirs out.
    type: str
    choices: [filter, nat, mangle, raw, security]
    default: filter
  chain:
    description:
      - Name of the owned user chain (at most 28 characters).
      - One of O(chain) and O(chains) is required.
    type: str
  chains:
    description:
      - Many chains in one call, each with the keys of the single-chain options. Chains of the same
        table are applied in one transaction, in the order listed; each table is read once.
      - All entries are validated before anything is read or changed (duplicate chains, names,
        jump parents, every rule); an invalid entry fails the task and nothing is applied.
      - Mutually exclusive with O(chain), O(rules) and O(jumps).
    type: list
    elements: dict
    suboptions:
      table:
        description: Table of the chain (default the top-level O(table)).
        type: str
        choices: [filter, nat, mangle, raw, security]
      chain:
        description: Name of the owned user chain (at most 28 characters).
        type: str
        required: true
      rules:
        description: Rules of the chain in order (see the top-level O(rules)); omit to leave the content alone.
        type: list
        elements: str
      jumps:
        description: Rules in built-in chains that jump to the chain (see the top-level O(jumps)).
        type: list
        elements: dict
        default: []
        suboptions:
          chain:
            description: Built-in chain that holds the jump.
            type: str
            required: true
          position:
            description: Where a missing jump is inserted.
            type: str
            choices: [first, last]
            default: first
          args:
            description: Match arguments of the jump.
            type: str
            default: ""
          comment:
            description: Comment of the jump.
            type: str
      state:
        description: Whether the chain exists (default the top-level O(state)).
        type: str
        choices: [present, absent]
  rules:
    description:
      - Rule specifications in order, without C(-A CHAIN), for example C(-j MARK --or-mark 0x4000).
      - Use double quotes for arguments with spaces (C(-m comment --comment "a b")).
      - When omitted, the chain's content is not managed (for chains another program such as
        kube-proxy fills); the chain is only created if missing and the O(jumps) are managed.
    type: list
    elements: str
  jumps:
    description:
      - Rules in built-in chains that jump to O(chain).
      - Other jumps into O(chain) from built-in chains are removed.
    type: list
    elements: dict
    default: []
    suboptions:
      chain:
        description: Built-in chain that holds the jump, for example V(OUTPUT).
        type: str
        required: true
      position:
        description:
          - Where a missing jump is inserted. An existing identical jump is left where it is.
        type: str
        choices: [first, last]
        default: first
      args:
        description: Match arguments of the jump, for example C(-m addrtype --dst-type LOCAL).
        type: str
        default: ""
      comment:
        description: Comment of the jump (C(-m comment --comment)).
        type: str
  family:
    description: V(ipv4) uses iptables, V(ipv6) uses ip6tables.
    type: str
    choices: [ipv4, ipv6]
    default: ipv4
  backend:
    description:
      - iptables backend. V(auto) picks the one that holds C(KUBE-) chains in the table, else the
        one the C(iptables) command uses.
    type: str
    choices: [auto, nft, legacy]
    default: auto
  state:
    description:
      - V(absent) removes the jumps into the chain and the chain itself.
      - With O(chains), the state of the entries that leave theirs out.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Requires iptables (1.8 or later) and, for the canonicalising round trip, C(unshare) from util-linux.
"""

EXAMPLES = r"""
- name: Mark packets for masquerading
  kubeipvs.node.iptables_chain:
    table: nat
    chain: KUBE-MARK-MASQ
    rules:
      - -j MARK --or-mark 0x4000

- name: Masquerade marked packets, jumped to from POSTROUTING
  kubeipvs.node.iptables_chain:
    table: nat
    chain: KUBE-POSTROUTING
    rules:
      - -m mark ! --mark 0x4000/0x4000 -j RETURN
      - -j MARK --xor-mark 0x4000
      - -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
    jumps:
      - chain: POSTROUTING
        comment: kubernetes postrouting rules

- name: Several chains of two tables in one call (one read and one transaction per table)
  kubeipvs.node.iptables_chain:
    family: ipv4
    chains:
      - table: nat
        chain: KUBE-MARK-MASQ
        rules:
          - -j MARK --or-mark 0x4000
      - table: nat
        chain: KUBE-SERVICES
        jumps:
          - chain: OUTPUT
            comment: kubernetes service portals
      - table: filter
        chain: KUBE-FORWARD
        jumps:
          - chain: FORWARD
            comment: kubernetes forwarding rules

- name: Remove a chain and the jumps into it
  kubeipvs.node.iptables_chain:
    table: filter
    chain: EDGE-OLD
    state: absent
"""

RETURN = r"""
backend:
  description: The iptables backend used (comma-separated when tables use different ones).
  returned: always
  type: str
  sample: nft
rules:
  description: The chain's rules as iptables prints them (empty when absent).
  returned: when O(chain) is used
  type: list
  elements: str
  sample: ["-j MARK --set-xmark 0x4000/0x4000"]
chains:
  description: One result per chain, in the order given (table, chain, changed, backend, rules).
  returned: always
  type: list
  elements: dict
  sample:
    - table: nat
      chain: KUBE-MARK-MASQ
      changed: true
      backend: nft
      rules: ["-j MARK --set-xmark 0x4000/0x4000"]
commands:
  description: The iptables-restore lines that were (or in check mode would be) applied, every table's transaction.
  returned: always
  type: list
  elements: str
  sample: ["*nat", ":KUBE-MARK-MASQ - [0:0]", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000", "COMMIT"]
"""

import functools
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._iptables import choose_backend
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as iptables_lib

LOCK_WAIT_SECONDS = "5"


def run(module, argv, data=None):
    return module.run_command(argv, data=data, binary_data=True, environ_update={"LC_ALL": "C"})


class DesiredChain:
    """One validated chain spec; ``rules`` None leaves the content alone, ``jumps`` are (parent, position, tokens)."""

    def __init__(self, table, chain, rules, jumps, present):
        self.table = table
        self.chain = chain
        self.rules = rules
        self.jumps = jumps
        self.present = present


def desired_chain(spec, family):
    table, chain = spec["table"], spec["chain"]
    iptables_lib.validate_chain_name(table, chain)
    rules = None if spec["rules"] is None else [iptables_lib.normalise_rule(rule, family) for rule in spec["rules"]]
    jumps = []
    for jump in spec["jumps"] or []:
        if jump["chain"] not in iptables_lib.BUILTIN_CHAINS[table]:
            raise KubeIpvsError(
                "jump from {} is not possible: the built-in chains of {} are {}".format(
                    jump["chain"], table, ", ".join(iptables_lib.BUILTIN_CHAINS[table])
                )
            )
        jumps.append((jump["chain"], jump["position"], iptables_lib.jump_tokens(jump, chain, family)))
    return DesiredChain(table, chain, rules, jumps, spec["state"] == "present")


def validate_all(specs, family, single):
    """Every spec validated before anything is read or changed; all problems reported at once."""
    if single:
        return [desired_chain(specs[0], family)]
    problems, desired, seen = [], [], set()
    for index, spec in enumerate(specs):
        label = f"chains[{index}] ({spec['table']}/{spec['chain']})"
        if (spec["table"], spec["chain"]) in seen:
            problems.append(f"{label}: listed more than once")
            continue
        seen.add((spec["table"], spec["chain"]))
        try:
            desired.append(desired_chain(spec, family))
        except KubeIpvsError as error:
            problems.append(f"{label}: {error.msg}")
    removed = {(wanted.table, wanted.chain) for wanted in desired if not wanted.present}
    for wanted in desired:
        for table, chain in removed:
            if (
                wanted.present
                and wanted.table == table
                and any(iptables_lib.targets(rule, chain) for rule in wanted.rules or [])
            ):
                problems.append(f"{table}/{wanted.chain}: its rules jump to {chain}, which this call removes")
    if problems:
        raise KubeIpvsError(
            "{} problem(s) in chains; nothing was applied: {}".format(len(problems), " | ".join(problems)),
            problems=problems,
        )
    return desired


def scratch_set_lines(module, rules, family):
    """create lines for the ipsets the rules match on, so the scratch namespace accepts them.

    In check mode a set the node does not have gets a stand-in of the same dimension: an ipset task
    before this one only pretended to create it, and the real node stays untouched either way.
    """
    ipset_bin = module.get_bin_path("ipset")
    lines = []
    for name, dimension in iptables_lib.set_dimensions(rules).items():
        rc, out, err = run(module, [ipset_bin, "list", "-t", name]) if ipset_bin else (1, "", "ipset missing")
        if rc != 0:
            if module.check_mode and ipset_bin:
                module.warn(
                    f"check mode: ipset {name} does not exist on the node; the rules matching it were "
                    "validated against a stand-in set (a real run fails unless the set is created first)"
                )
                lines.append(iptables_lib.stand_in_set_line(name, dimension, family))
                continue
            raise KubeIpvsError(
                f"a rule matches ipset {name}, which does not exist on the node ({err.strip()}); create it first "
                "(kubeipvs.node.ipset)"
            )
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        header = fields.get("Header", "").split()
        set_family = header[header.index("family") + 1] if "family" in header else None
        lines.append(f"create {name} {fields.get('Type', '')}" + (f" family {set_family}" if set_family else ""))
    return lines


def canonicalise(module, tools, table, state, family, wanted, declared):
    """Apply the chains' rules and jumps in a scratch network namespace and read them back as
    iptables prints them; ``wanted`` DesiredChains get the canonical forms.

    Also the validation step: a rule iptables rejects fails here, before the node is touched.
    """
    unshare = module.get_bin_path("unshare")
    if not unshare or not wanted:
        return
    parents = {}
    for desired in wanted:
        for parent, _position, tokens in desired.jumps:
            parents.setdefault(parent, []).append(tokens)
    contents = {desired.chain: desired.rules or [] for desired in wanted}
    contents.update(parents)
    batch = iptables_lib.render_scratch(table, list(dict.fromkeys([*state.chains, *declared])), contents)
    rules = [rule for desired in wanted for rule in desired.rules or []]
    rules += [tokens for tokens_list in parents.values() for tokens in tokens_list]
    set_lines = scratch_set_lines(module, rules, family)
    with tempfile.TemporaryDirectory(dir=module.tmpdir) as scratch_dir:
        sets_file = os.path.join(scratch_dir, "sets")
        rules_file = os.path.join(scratch_dir, "rules")
        with open(sets_file, "w") as handle:
            handle.write("\n".join(set_lines) + "\n")
        with open(rules_file, "w") as handle:
            handle.write(batch)
        script = 'set -e; if [ -s "$1" ]; then ipset restore -file "$1"; fi; "$2" --noflush < "$3"; exec "$4" -t "$5"'
        rc, out, err = run(
            module,
            [
                unshare,
                "--net",
                "--",
                "/bin/sh",
                "-c",
                script,
                "sh",
                sets_file,
                tools.restore,
                rules_file,
                tools.save,
                table,
            ],
        )
    if rc != 0:
        raise KubeIpvsError(
            "iptables rejected the rules for {}/{}; nothing was applied: {}".format(
                table, ", ".join(desired.chain for desired in wanted), err.strip()
            ),
            restore_input=batch.splitlines(),
        )
    scratch = iptables_lib.parse_save(out, table)
    # Each parent got its jumps appended in the order they are listed, and nothing else.
    by_parent = {parent: list(scratch.rules_of(parent)) for parent in parents}
    for desired in wanted:
        if desired.rules is not None:
            desired.rules = scratch.rules_of(desired.chain)
        desired.jumps = [(parent, position, by_parent[parent].pop(0)) for parent, position, _tokens in desired.jumps]


def plan_table(module, tools, table, state, family, wanted):
    """[(DesiredChain, ChainPlan)] for the chains of one table, canonicalised where they differ."""

    def plan(desired):
        return iptables_lib.plan_chain(state, table, desired.chain, desired.rules, desired.jumps, desired.present)

    pairs = [(desired, plan(desired)) for desired in wanted]
    differing = [desired for desired, one in pairs if desired.present and (one.appends or one.inserts)]
    if differing:
        # The normaliser's forms differ from the kernel's: ask iptables itself (and validate).
        canonicalise(module, tools, table, state, family, differing, [desired.chain for desired in wanted])
        pairs = [(desired, plan(desired)) for desired in wanted]
    owned = {desired.chain for desired in wanted if desired.rules is not None or not desired.present}
    for desired, one in pairs:
        if not desired.present and one.destroy:
            foreign = iptables_lib.foreign_references(state, table, desired.chain, owned=owned)
            if foreign:
                raise KubeIpvsError(
                    "cannot remove {}/{}: chains this module does not own jump to it: {}".format(
                        table, desired.chain, "; ".join(foreign)
                    ),
                    referencing_rules=foreign,
                )
    return pairs


def ensure_chains(module):
    params = module.params
    family = params["family"]
    single = params["chains"] is None
    desired = validate_all(iptables_lib.merge_chain_specs(params), family, single)
    tables = list(dict.fromkeys(wanted.table for wanted in desired))

    planned = {}
    for table in tables:
        wanted = [one for one in desired if one.table == table]
        tools, state = choose_backend(
            module.get_bin_path, functools.partial(run, module), family, params["backend"], table,
            [one.chain for one in wanted],
        )
        planned[table] = (tools, state, plan_table(module, tools, table, state, family, wanted))

    commands, applied = [], []
    for table in tables:
        tools, _state, pairs = planned[table]
        batch = iptables_lib.merge_plans([one for _wanted, one in pairs]).render(table)
        commands += batch.splitlines()
        if batch and not module.check_mode:
            rc, _out, err = run(module, [tools.restore, "--noflush", "-w", LOCK_WAIT_SECONDS], data=batch)
            if rc != 0:
                names = ", ".join(wanted.chain for wanted, one in pairs if one.changed)
                raise KubeIpvsError(
                    f"{tools.restore} refused the change to {table}/{names}; nothing was applied"
                    + (" to {} (applied before it: {})".format(table, ", ".join(applied)) if applied else "")
                    + f": {err.strip()}",
                    restore_input=batch.splitlines(),
                )
            applied.append(table)

    results, described = [], []
    for table in tables:
        tools, state, pairs = planned[table]
        after = state
        for wanted, one in pairs:
            if one.changed:
                after = iptables_lib.apply_plan_to_state(
                    after, table, wanted.chain, one, wanted.rules, wanted.jumps, wanted.present
                )
        for wanted, one in pairs:
            results.append(
                {
                    "table": table,
                    "chain": wanted.chain,
                    "changed": one.changed,
                    "backend": tools.backend,
                    "rules": [iptables_lib.render_tokens(rule) for rule in after.rules_of(wanted.chain)],
                }
            )
            if module._diff and (single or one.changed):
                described.append(
                    (
                        f"{table}/{wanted.chain}",
                        iptables_lib.describe(state, table, wanted.chain),
                        iptables_lib.describe(after, table, wanted.chain),
                    )
                )
    result = {
        "changed": any(one["changed"] for one in results),
        "backend": ",".join(dict.fromkeys(one["backend"] for one in results)),
        "chains": results,
        "commands": commands,
    }
    if single:
        result["rules"] = results[0]["rules"]
    if module._diff:
        if single:
            label, before, after_text = described[0]
            result["diff"] = {"before_header": label, "after_header": label, "before": before, "after": after_text}
        else:
            result["diff"] = iptables_lib.describe_many(described, len(results))
    return result


JUMP_OPTIONS = {
    "chain": {"type": "str", "required": True},
    "position": {"type": "str", "choices": ["first", "last"], "default": "first"},
    "args": {"type": "str", "default": ""},
    "comment": {"type": "str"},
}


def main():
    module = AnsibleModule(
        argument_spec={
            "table": {"type": "str", "choices": list(iptables_lib.BUILTIN_CHAINS), "default": "filter"},
            "chain": {"type": "str"},
            "chains": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "table": {"type": "str", "choices": list(iptables_lib.BUILTIN_CHAINS)},
                    "chain": {"type": "str", "required": True},
                    "rules": {"type": "list", "elements": "str"},
                    "jumps": {"type": "list", "elements": "dict", "default": [], "options": JUMP_OPTIONS},
                    "state": {"type": "str", "choices": ["present", "absent"]},
                },
            },
            "rules": {"type": "list", "elements": "str"},
            "jumps": {"type": "list", "elements": "dict", "default": [], "options": JUMP_OPTIONS},
            "family": {"type": "str", "choices": ["ipv4", "ipv6"], "default": "ipv4"},
            "backend": {"type": "str", "choices": ["auto", "nft", "legacy"], "default": "auto"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        mutually_exclusive=[("chain", "chains"), ("rules", "chains"), ("jumps", "chains")],
        required_one_of=[("chain", "chains")],
        supports_check_mode=True,
    )
    run_module(module, ensure_chains)


if __name__ == "__main__":
    main()
