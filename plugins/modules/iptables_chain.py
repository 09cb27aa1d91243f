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
    is applied. Without C(unshare) the rules cannot be validated, so the task fails and applies nothing.
  - Rules, jump args and comments must hold no control character (a NUL would end a rule early), and
    MARK values and masks are 32-bit numbers; see the collection's docs/security.md.
  - A rule that matches an ipset the node does not have fails, except in check mode, where the
    rule is validated against a stand-in set of the same dimension in the scratch namespace (with a
    warning naming the set), because a preceding C(kubeipvs.node.ipset) task only pretended to
    create it.
  - Uses the node's iptables backend (nf_tables or legacy) - the one that already holds C(KUBE-)
    chains, else the one C(iptables) points to.
extends_documentation_fragment:
  - kubeipvs.node.state_src
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
        table are applied in one transaction, in the order listed; each table is read once. When
        iptables refuses a table, the tables applied before it are rolled back.
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
  - O(state_src) may hold O(chains).
  - Requires iptables (1.8 or later) and C(unshare) from util-linux (the validating round trip).
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._iptables import Iptables
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import state_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as iptables_lib
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._results import many_diff


def ensure_chains(module):
    params = module.params
    single = params["chains"] is None
    desired = iptables_lib.validate_all(iptables_lib.merge_chain_specs(params), params["family"], single)
    iptables = Iptables(Commands.of(module), params["family"])

    planned, tools_of = {}, {}
    for table, wanted in iptables_lib.by_table(desired):
        tools, state = iptables.choose(params["backend"], table, [one.chain for one in wanted])
        pairs = iptables_lib.plan_chains(state, table, wanted)
        differing = iptables_lib.not_predicted(pairs)
        if differing:
            # The normaliser's forms differ from the kernel's: ask iptables itself (and validate).
            declared = [one.chain for one in wanted]
            for warning in iptables.canonicalise(tools, table, state, differing, declared, module.check_mode):
                module.warn(warning)
            pairs = iptables_lib.plan_chains(state, table, wanted)
        iptables_lib.refuse_foreign_references(state, table, pairs)
        planned[table], tools_of[table] = (tools.backend, state, pairs), tools

    commands, applied = [], []
    for table, (_backend, _state, pairs) in planned.items():
        batch = iptables_lib.merge_plans([one for _wanted, one in pairs]).render(table)
        commands += batch.splitlines()
        if batch and not module.check_mode:
            tools = tools_of[table]
            names = ", ".join(wanted.chain for wanted, one in pairs if one.changed)
            before = f" to {table}" if applied else ""
            try:
                iptables.restore(tools, batch, f"{tools.restore} refused the change to {table}/{names}; "
                                               f"nothing was applied{before}")
            except KubeIpvsError as error:
                # The tables changed before this one are put back: a call changes everything or nothing.
                undone = iptables.roll_back([(tools_of[done], iptables_lib.undo_batch(done, *planned[done][1:]))
                                             for done in applied])
                raise KubeIpvsError(error.msg + undone, **error.details) from None
            applied.append(table)

    results, described = iptables_lib.chain_results(planned, module._diff, single)
    result = {
        "changed": any(one["changed"] for one in results),
        "backend": ",".join(dict.fromkeys(one["backend"] for one in results)),
        "chains": results,
        "commands": commands,
    }
    if single:
        result["rules"] = results[0]["rules"]
    if module._diff:
        result["diff"] = many_diff(described, len(results), single, "iptables chains", "chains")
    return result


JUMP_OPTIONS = {
    "chain": {"type": "str", "required": True},
    "position": {"type": "str", "choices": ["first", "last"], "default": "first"},
    "args": {"type": "str", "default": ""},
    "comment": {"type": "str"},
}


def build_module():
    return state_module(
        AnsibleModule,
        state_options=("chains",),
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


def main():
    run_module(build_module(), ensure_chains)


if __name__ == "__main__":
    main()
