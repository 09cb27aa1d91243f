#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: iptables_chain
short_description: Declare the whole content of one owned iptables chain and the jumps into it
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Makes a user chain of one table hold exactly the listed rules, in order, and makes the listed
    built-in chains jump to it.
  - Reads the table once with C(iptables-save -t TABLE), compares rules normalised the way
    iptables prints them, and applies all changes in one C(iptables-restore --noflush -w)
    transaction, so it can run beside kube-proxy. Rules of chains it does not own are never touched.
  - Rules the built-in normaliser cannot predict are canonicalised by applying them in a scratch
    network namespace (C(unshare --net)) and reading them back, so a second run changes nothing.
    The same round trip validates the rules; a rule iptables rejects fails the task and nothing
    is applied.
  - Uses the node's iptables backend (nf_tables or legacy) - the one that already holds C(KUBE-)
    chains, else the one C(iptables) points to.
extends_documentation_fragment:
  - kubeipvs.node.attributes
options:
  table:
    description: Table of the chain.
    type: str
    choices: [filter, nat, mangle, raw, security]
    default: filter
  chain:
    description: Name of the owned user chain (at most 28 characters).
    type: str
    required: true
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
    description: V(absent) removes the jumps into the chain and the chain itself.
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

- name: Remove a chain and the jumps into it
  kubeipvs.node.iptables_chain:
    table: filter
    chain: EDGE-OLD
    state: absent
"""

RETURN = r"""
backend:
  description: The iptables backend used.
  returned: always
  type: str
  sample: nft
rules:
  description: The chain's rules as iptables prints them (empty when absent).
  returned: always
  type: list
  elements: str
  sample: ["-j MARK --set-xmark 0x4000/0x4000"]
commands:
  description: The iptables-restore lines that were (or in check mode would be) applied.
  returned: always
  type: list
  elements: str
  sample: ["*nat", ":KUBE-MARK-MASQ - [0:0]", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000", "COMMIT"]
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils import _iptables as iptables_lib
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, run_module

LOCK_WAIT_SECONDS = "5"


class Tools:
    """The save/restore commands of one backend and family."""

    def __init__(self, module, backend, family):
        prefix = "ip6tables" if family == "ipv6" else "iptables"
        self.backend = backend
        self.save = module.get_bin_path(f"{prefix}-{backend}-save") or module.get_bin_path(f"{prefix}-save")
        self.restore = module.get_bin_path(f"{prefix}-{backend}-restore") or module.get_bin_path(f"{prefix}-restore")
        if not self.save or not self.restore:
            raise KubeIpvsError(f"{prefix}-save and {prefix}-restore are needed on the node ({backend} backend)")


def run(module, argv, data=None):
    return module.run_command(argv, data=data, binary_data=True, environ_update={"LC_ALL": "C"})


def default_backend(module, family):
    binary = module.get_bin_path("ip6tables" if family == "ipv6" else "iptables")
    if not binary:
        raise KubeIpvsError("iptables is not installed on the node")
    target = os.path.realpath(binary)
    if "legacy" in target:
        return "legacy"
    if "nft" in target:
        return "nft"
    out = run(module, [binary, "--version"])[1]
    return "legacy" if "legacy" in out else "nft"


def read_table(module, tools, table):
    rc, out, err = run(module, [tools.save, "-t", table])
    if rc != 0:
        if "does not exist" in err or "Table does not exist" in err:
            return iptables_lib.TableState()
        raise KubeIpvsError(f"{tools.save} -t {table} failed: {err.strip()}", rc=rc)
    return iptables_lib.parse_save(out, table)


def legacy_table_loaded(family, table):
    """Whether the legacy backend has the table in this network namespace (the kernel lists them in /proc)."""
    path = "/proc/net/ip6_tables_names" if family == "ipv6" else "/proc/net/ip_tables_names"
    try:
        with open(path) as handle:
            return table in handle.read().split()
    except OSError:
        return False


def choose_backend(module, params):
    """(tools, current table): the backend holding KUBE- chains wins; otherwise the default one."""
    family, table = params["family"], params["table"]
    if params["backend"] != "auto":
        tools = Tools(module, params["backend"], family)
        return tools, read_table(module, tools, table)
    default = default_backend(module, family)
    tools = Tools(module, default, family)
    state = read_table(module, tools, table)
    if iptables_lib.kube_chains(state) or params["chain"] in state.chains:
        return tools, state
    other = "legacy" if default == "nft" else "nft"
    prefix = "ip6tables" if family == "ipv6" else "iptables"
    if other == "legacy" and not legacy_table_loaded(family, table):
        # Reading an unloaded legacy table would create it (and make iptables-nft warn forever after).
        return tools, state
    if module.get_bin_path(f"{prefix}-{other}-save"):
        other_tools = Tools(module, other, family)
        other_state = read_table(module, other_tools, table)
        if iptables_lib.kube_chains(other_state) or params["chain"] in other_state.chains:
            return other_tools, other_state
    return tools, state


def scratch_set_lines(module, rules):
    """create lines for the ipsets the rules match on, so the scratch namespace accepts them."""
    ipset_bin = module.get_bin_path("ipset")
    lines = []
    for name in iptables_lib.referenced_sets(rules):
        rc, out, err = run(module, [ipset_bin, "list", "-t", name]) if ipset_bin else (1, "", "ipset missing")
        if rc != 0:
            raise KubeIpvsError(
                f"a rule matches ipset {name}, which does not exist on the node ({err.strip()}); create it first "
                "(kubeipvs.node.ipset)"
            )
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        header = fields.get("Header", "").split()
        family = header[header.index("family") + 1] if "family" in header else None
        lines.append(f"create {name} {fields.get('Type', '')}" + (f" family {family}" if family else ""))
    return lines


def canonicalise(module, tools, table, state, chain, rules, jumps):
    """Apply the rules in a scratch network namespace and read them back as iptables prints them.

    Also the validation step: a rule iptables rejects fails here, before the node is touched.
    """
    unshare = module.get_bin_path("unshare")
    if not unshare:
        return rules, jumps
    parents = {}
    for parent, _position, tokens in jumps:
        parents.setdefault(parent, []).append(tokens)
    batch = iptables_lib.render_scratch(table, [*state.chains, chain], {chain: rules or [], **parents})
    set_lines = scratch_set_lines(module, list(rules or []) + [tokens for _parent, _position, tokens in jumps])
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
            f"iptables rejected the rules for {table}/{chain}; nothing was applied: {err.strip()}",
            restore_input=batch.splitlines(),
        )
    scratch = iptables_lib.parse_save(out, table)
    canonical_rules = None if rules is None else scratch.rules_of(chain)
    # Each parent got its jumps appended in the order they are listed, and nothing else.
    by_parent = {parent: list(scratch.rules_of(parent)) for parent in parents}
    canonical_jumps = [(parent, position, by_parent[parent].pop(0)) for parent, position, _tokens in jumps]
    return canonical_rules, canonical_jumps


def ensure_chain(module):
    params = module.params
    table, chain, family = params["table"], params["chain"], params["family"]
    present = params["state"] == "present"
    iptables_lib.validate_chain_name(table, chain)
    desired_rules = (
        None if params["rules"] is None else [iptables_lib.normalise_rule(rule, family) for rule in params["rules"]]
    )
    desired_jumps = []
    for jump in params["jumps"]:
        if jump["chain"] not in iptables_lib.BUILTIN_CHAINS[table]:
            raise KubeIpvsError(
                "jump from {} is not possible: the built-in chains of {} are {}".format(
                    jump["chain"], table, ", ".join(iptables_lib.BUILTIN_CHAINS[table])
                )
            )
        desired_jumps.append((jump["chain"], jump["position"], iptables_lib.jump_tokens(jump, chain, family)))

    tools, state = choose_backend(module, params)
    plan = iptables_lib.plan_chain(state, table, chain, desired_rules, desired_jumps, present)
    if present and (plan.appends or plan.inserts):
        # The normaliser's forms differ from the kernel's: ask iptables itself (and validate).
        desired_rules, desired_jumps = canonicalise(module, tools, table, state, chain, desired_rules, desired_jumps)
        plan = iptables_lib.plan_chain(state, table, chain, desired_rules, desired_jumps, present)
    if not present and plan.destroy:
        foreign = iptables_lib.foreign_references(state, table, chain, owned={chain})
        if foreign:
            raise KubeIpvsError(
                "cannot remove {}/{}: chains this module does not own jump to it: {}".format(
                    table, chain, "; ".join(foreign)
                ),
                referencing_rules=foreign,
            )
    batch = plan.render(table)
    if plan.changed and not module.check_mode:
        rc, _out, err = run(module, [tools.restore, "--noflush", "-w", LOCK_WAIT_SECONDS], data=batch)
        if rc != 0:
            raise KubeIpvsError(
                f"{tools.restore} refused the change to {table}/{chain}; nothing was applied: {err.strip()}",
                restore_input=batch.splitlines(),
            )
    after = (
        iptables_lib.apply_plan_to_state(state, table, chain, plan, desired_rules, desired_jumps, present)
        if plan.changed
        else state
    )
    result = {
        "changed": plan.changed,
        "backend": tools.backend,
        "rules": [iptables_lib.render_tokens(rule) for rule in after.rules_of(chain)],
        "commands": batch.splitlines(),
    }
    if module._diff:
        result["diff"] = {
            "before_header": f"{table}/{chain}",
            "after_header": f"{table}/{chain}",
            "before": iptables_lib.describe(state, table, chain),
            "after": iptables_lib.describe(after, table, chain),
        }
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "table": {"type": "str", "choices": list(iptables_lib.BUILTIN_CHAINS), "default": "filter"},
            "chain": {"type": "str", "required": True},
            "rules": {"type": "list", "elements": "str"},
            "jumps": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "chain": {"type": "str", "required": True},
                    "position": {"type": "str", "choices": ["first", "last"], "default": "first"},
                    "args": {"type": "str", "default": ""},
                    "comment": {"type": "str"},
                },
            },
            "family": {"type": "str", "choices": ["ipv4", "ipv6"], "default": "ipv4"},
            "backend": {"type": "str", "choices": ["auto", "nft", "legacy"], "default": "auto"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    run_module(module, ensure_chain)


if __name__ == "__main__":
    main()
