# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables: parse ``iptables-save`` output, normalise rules the way iptables prints them, plan the
content of owned chains and the jumps into them, and render one ``iptables-restore --noflush`` batch.

Pure logic: finding the node's backends and running the tools is node/_iptables.py's job.
Normalisation covers the forms this collection writes (see ``normalise_rule``); anything it does
not know is canonicalised through a round trip in a scratch network namespace, so a second run
never changes anything.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import INET, IPV4, IPV6, family_of
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._results import fail_on_problems, validate_each
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    CHAIN_NAME,
    IPSET_NAME,
    check_text,
    integer,
)

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

MAX_CHAIN_NAME = 28

_PROTOCOL_NUMBERS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp", "132": "sctp", "33": "dccp"}
_PROTOCOL_ALIASES = {"icmpv6": "ipv6-icmp"}
# Generic options in the order iptables-save prints them, with their long spellings.
_GENERIC = (
    ("-s", ("--source", "--src")),
    ("-d", ("--destination", "--dst")),
    ("-i", ("--in-interface",)),
    ("-o", ("--out-interface",)),
    ("-p", ("--protocol",)),
)
_GENERIC_ALIAS = {alias: short for short, aliases in _GENERIC for alias in (short, *aliases)}
_GENERIC_ORDER = [short for short, _aliases in _GENERIC]
# Options that make iptables load the protocol's own match implicitly (``-p tcp --dport 80``).
_PROTOCOL_MATCH_OPTIONS = {
    "--dport",
    "--sport",
    "--destination-port",
    "--source-port",
    "--tcp-flags",
    "--syn",
    "--tcp-option",
    "--icmp-type",
    "--icmpv6-type",
    "--chunk-types",
}
_PROTOCOL_MATCHES = {"tcp", "udp", "sctp", "dccp", "icmp", "icmp6", "udplite"}
_OPTION_ALIASES = {"--destination-port": "--dport", "--source-port": "--sport"}


# ---------------------------------------------------------------------------------------------
# Reading iptables-save


class TableState:
    """One table as iptables-save printed it: chain names (with policy) and rules per chain, in order.

    Rules stay raw text until a chain's rules are asked for: a node may carry tens of thousands of
    rules in chains the module never looks at, and tokenising them would dominate a no-op run.
    """

    def __init__(self):
        self.chains = {}
        self.raw = {}
        self.parsed = {}

    def rules_of(self, chain):
        """The chain's rules as token tuples (a list the caller may change, kept for later calls)."""
        if chain not in self.parsed:
            self.parsed[chain] = [split_saved(text) for text in self.raw.get(chain, ())]
        return self.parsed[chain]

    def set_rules(self, chain, rules):
        self.parsed[chain] = list(rules)

    def rule_chains(self):
        return list(dict.fromkeys([*self.raw, *self.parsed]))

    def copy(self):
        twin = TableState()
        twin.chains = dict(self.chains)
        twin.raw = self.raw  # never changed after parsing
        twin.parsed = {chain: list(rules) for chain, rules in self.parsed.items()}
        return twin


_NEEDS_SHLEX = re.compile(r"[\"'\\]")


def split_saved(text):
    """Tokens of a rule as iptables-save prints it, read the way iptables-restore reads it: white space
    separates words, a double quote opens and closes a quoted part, and inside one a backslash makes
    the next character literal (iptables-save writes ``\\'`` for a ``'`` in a comment, which shlex would
    keep as two characters). Outside quotes every character is literal."""
    if not _NEEDS_SHLEX.search(text):
        return tuple(text.split())
    tokens, word, quoted, escaped, started = [], [], False, False, False
    for char in text:
        if quoted:
            if escaped:
                word.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            else:
                word.append(char)
        elif char == '"':
            quoted = started = True
        elif char in " \t\n":
            if word or started:
                tokens.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
            started = True
    if quoted:
        raise KubeIpvsError(f"cannot parse rule '{text}': a quote is not closed")
    if word or started:
        tokens.append("".join(word))
    return tuple(tokens)


def split_rule(text):
    """Tokens of a rule as a task writes it: shell-like (shlex), so 'single quotes' work too."""
    if not _NEEDS_SHLEX.search(text):
        return tuple(text.split())
    try:
        return tuple(shlex.split(text))
    except ValueError as error:
        raise KubeIpvsError(f"cannot parse rule '{text}': {error}") from None


def parse_save(text, table):
    """The named table from iptables-save output (other tables are ignored)."""
    state = TableState()
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current != table:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split(" ", 2)[:2]
            state.chains[name] = policy
        elif line.startswith("-A "):
            _verb, chain, rest = [*line.split(" ", 2), ""][:3]
            state.raw.setdefault(chain, []).append(rest)
    return state


def kube_chains(state):
    return [name for name in state.chains if name.startswith("KUBE-")]


# ---------------------------------------------------------------------------------------------
# Normalisation


def _address(value, family):
    if "%" in value:
        raise KubeIpvsError(f"address {value} carries an IPv6 scope ('%'); give a plain address")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value  # host names and ranges: the round trip canonicalises them
    if family_of(network) != family:
        raise KubeIpvsError(f"address {value} does not belong to family {family}")
    return str(network)


def _mark_number(text, option):
    """A 32-bit mark or mask of ``option``: decimal or 0x-hex, as iptables reads it."""
    try:
        return integer(text, option, 0, 0xFFFFFFFF)
    except KubeIpvsError:
        raise KubeIpvsError(f"{option} {text!r}: a mark is a number 0-0xffffffff (decimal or 0x-hex), with an "
                            "optional /mask") from None


def _hex(value, option):
    return f"0x{_mark_number(value, option):x}"


def _mark_value(value):
    """``16384`` → ``0x4000``; ``0x4000/0x4000`` keeps its mask."""
    mark, separator, mask = value.partition("/")
    return _hex(mark, "--mark") + (("/" + _hex(mask, "--mark")) if separator else "")


def _mark_target(option, value):
    """The MARK target's shorthands as iptables-save prints them (``--set-xmark value/mask``)."""
    mark, separator, mask = value.partition("/")
    mark_int = _mark_number(mark, option)
    if option == "--or-mark":
        return ["--set-xmark", f"0x{mark_int:x}/0x{mark_int:x}"]
    if option == "--xor-mark":
        return ["--set-xmark", f"0x{mark_int:x}/0x0"]
    if option == "--and-mark":
        return ["--set-xmark", f"0x0/0x{(~mark_int) & 0xFFFFFFFF:x}"]
    mask_int = _mark_number(mask, option) if separator else 0xFFFFFFFF
    return ["--set-xmark", f"0x{mark_int:x}/0x{mask_int:x}"]


def _groups(tokens):
    """Split tokens into generic options, match groups (``-m name ...``) and the target group."""
    generic = {}
    groups = []
    target = []
    index = 0
    pending_negation = False
    current = None
    implicit = None
    while index < len(tokens):
        token = tokens[index]
        if token == "!":
            pending_negation = True
            index += 1
            continue
        if token in _GENERIC_ALIAS and current is not target and index + 1 < len(tokens):
            generic[_GENERIC_ALIAS[token]] = (pending_negation, tokens[index + 1])
            pending_negation = False
            index += 2
            continue
        if token in ("-m", "--match") and index + 1 < len(tokens):
            current = ["-m", tokens[index + 1]]
            groups.append(current)
            index += 2
            continue
        if token in ("-j", "--jump", "-g", "--goto") and index + 1 < len(tokens):
            current = target
            target += ["-g" if token in ("-g", "--goto") else "-j", tokens[index + 1]]
            index += 2
            continue
        if token in _PROTOCOL_MATCH_OPTIONS and (current is None or current[1] not in _PROTOCOL_MATCHES):
            # "-p tcp --dport 80": iptables loads the protocol's match implicitly (once per rule).
            if implicit is None:
                implicit = ["-m", "?"]
                groups.append(implicit)
            current = implicit
        if current is None:
            raise KubeIpvsError("rule '{}': option {} needs a match (-m) before it".format(" ".join(tokens), token))
        if pending_negation:
            current.append("!")
            pending_negation = False
        current.append(_OPTION_ALIASES.get(token, token))
        index += 1
    if pending_negation:
        raise KubeIpvsError("rule '{}' ends with a dangling '!'".format(" ".join(tokens)))
    return generic, groups, target


def normalise_rule(rule, family=IPV4):
    """Tokens of a rule the way iptables-save prints it, for the forms this collection uses.

    The rule text must hold no control character (a NUL would end the rule early where iptables reads
    it, a newline would start another command). Handled: generic options order and long spellings
    (-s -d -i -o -p), host addresses as /32 or
    /128 and networks masked, protocol names and numbers, the implicit ``-m tcp``/``-m udp``
    match of ``--dport``/``--sport``, ``--destination-port`` spellings, ``-m mark --mark`` in hex,
    the MARK target's ``--set-mark``/``--or-mark``/``--xor-mark``/``--and-mark`` as
    ``--set-xmark``, REJECT's default ``--reject-with``, and quoting (``-m comment --comment``).
    """
    if isinstance(rule, str):
        tokens = split_rule(check_text(rule, "rule"))
    else:
        tokens = tuple(check_text(token, "rule") for token in rule)
    generic, groups, target = _groups(tokens)
    out = []
    protocol = None
    for short in _GENERIC_ORDER:
        if short not in generic:
            continue
        negated, value = generic[short]
        if short in ("-s", "-d"):
            value = ",".join(_address(part, family) for part in value.split(","))
        elif short == "-p":
            value = value.lower()
            value = _PROTOCOL_NUMBERS.get(value, _PROTOCOL_ALIASES.get(value, value))
            protocol = None if negated else value
        out += (["!"] if negated else []) + [short, value]
    for group in groups:
        name, options = group[1], group[2:]
        if name == "?":
            if protocol is None:
                raise KubeIpvsError(
                    "rule '{}': {} needs a protocol (-p tcp, -p udp, ...)".format(" ".join(tokens), " ".join(options))
                )
            name = "icmp6" if protocol == "ipv6-icmp" else protocol
        if name == "mark":
            options = [
                _mark_value(option) if index and options[index - 1] == "--mark" else option
                for index, option in enumerate(options)
            ]
        out += ["-m", name, *options]
    if target:
        out += _normalise_target(target, family)
    return tuple(out)


def _normalise_target(target, family):
    verb, name, options = target[0], target[1], list(target[2:])
    if name == "MARK":
        rewritten = []
        index = 0
        while index < len(options):
            option = options[index]
            if option in ("--set-mark", "--or-mark", "--xor-mark", "--and-mark", "--set-xmark") and index + 1 < len(
                options
            ):
                rewritten += _mark_target(option, options[index + 1])
                index += 2
            else:
                rewritten.append(option)
                index += 1
        options = rewritten
    elif name == "REJECT" and "--reject-with" not in options:
        options += ["--reject-with", "icmp6-port-unreachable" if family == IPV6 else "icmp-port-unreachable"]
    return [verb, name, *options]


def render_tokens(tokens):
    """A rule as iptables-restore reads it: double quotes where needed (it does not know single quotes)."""
    words = []
    for token in tokens:
        if token == "" or re.search(r"[\s\"'\\]", token):
            words.append('"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            words.append(token)
    return " ".join(words)


def jump_tokens(jump, chain, family):
    """The rule in a built-in chain that jumps to ``chain``: match args, comment, then ``-j chain``."""
    tokens = list(split_rule(check_text(jump.get("args") or "", "jump args")))
    if jump.get("comment"):
        tokens += ["-m", "comment", "--comment", check_text(jump["comment"], "jump comment")]
    tokens += ["-j", chain]
    return normalise_rule(tokens, family)


def targets(tokens, chain):
    """Whether a rule jumps (or goes) to ``chain``."""
    return any(tokens[index] in ("-j", "-g") and tokens[index + 1] == chain for index in range(len(tokens) - 1))


def validate_chain_name(table, chain):
    if not isinstance(table, str) or table not in BUILTIN_CHAINS:
        raise KubeIpvsError("table '{}' is not one of {}".format(table, ", ".join(BUILTIN_CHAINS)))
    if chain in BUILTIN_CHAINS[table]:
        raise KubeIpvsError(f"{chain} is a built-in chain of {table}; this module owns user chains only")
    if not CHAIN_NAME.matches(chain):
        raise KubeIpvsError(f"chain name {chain!r} must be 1-{MAX_CHAIN_NAME} characters: {CHAIN_NAME.description}")


# ---------------------------------------------------------------------------------------------
# Planning


class ChainPlan:
    """Restore lines for one owned chain and its jumps, plus the before/after view for diff mode."""

    def __init__(self):
        self.declare = []
        self.deletes = []
        self.appends = []
        self.inserts = []
        self.destroy = []
        self.reasons = []

    @property
    def changed(self):
        return bool(self.declare or self.deletes or self.appends or self.inserts or self.destroy)

    def render(self, table):
        """One transaction for the table: chains first (jumps need them), removals, content, new jumps."""
        if not self.changed:
            return ""
        lines = ["*" + table, *self.declare, *self.deletes, *self.appends, *self.inserts, *self.destroy, "COMMIT"]
        return "\n".join(lines) + "\n"


def current_jumps(state, table, chain):
    """(parent, tokens) of every rule in a built-in chain that targets ``chain``, in order."""
    return [
        (parent, rule) for parent in BUILTIN_CHAINS[table] for rule in state.rules_of(parent) if targets(rule, chain)
    ]


def foreign_references(state, table, chain, owned):
    """Rules in user chains the module does not own that still target ``chain``."""
    builtins = set(BUILTIN_CHAINS[table])
    references = []
    for parent in state.rule_chains():
        if parent in builtins or parent in owned:
            continue
        if parent not in state.parsed and not any(chain in text for text in state.raw.get(parent, ())):
            continue  # cheap text test first: most foreign chains never mention ours
        references += [f"-A {parent} {render_tokens(rule)}" for rule in state.rules_of(parent) if targets(rule, chain)]
    return references


def plan_chain(state, table, chain, desired_rules, desired_jumps, present=True):
    """Changes that make ``chain`` hold exactly ``desired_rules`` and be reached by exactly ``desired_jumps``.

    ``desired_rules`` None leaves the chain's content alone (it is only created when missing).

    ``desired_jumps`` is a list of (parent, position, tokens). A jump already present anywhere in its
    parent chain is left where it is (as kube-proxy's EnsureRule does); missing ones are inserted
    first or appended last; jumps into ``chain`` that are not desired, and duplicates, are deleted.
    """
    plan = ChainPlan()
    exists = chain in state.chains
    have_jumps = current_jumps(state, table, chain)
    wanted = [] if not present else list(desired_jumps)
    remaining = list(have_jumps)
    for parent, position, tokens in wanted:
        if (parent, tokens) in remaining:
            remaining.remove((parent, tokens))
            continue
        line = (
            f"-I {parent} 1 {render_tokens(tokens)}" if position == "first" else f"-A {parent} {render_tokens(tokens)}"
        )
        plan.inserts.append(line)
        plan.reasons.append(f"jump from {parent} missing")
    for parent, tokens in remaining:
        plan.deletes.append(f"-D {parent} {render_tokens(tokens)}")
        plan.reasons.append(f"unwanted jump from {parent}")
    if present and desired_rules is None:
        # Content not managed (kube-proxy fills the chain): only make sure it exists.
        if not exists:
            plan.declare.append(f":{chain} - [0:0]")
            plan.reasons.append("chain missing")
    elif present:
        if not exists or list(state.rules_of(chain)) != list(desired_rules):
            plan.declare.append(f":{chain} - [0:0]")
            plan.appends += [f"-A {chain} {render_tokens(rule)}" for rule in desired_rules]
            plan.reasons.append("chain missing" if not exists else "rules differ")
    elif exists:
        plan.declare.append(f":{chain} - [0:0]")
        plan.destroy.append(f"-X {chain}")
        plan.reasons.append("chain present")
    return plan


def referenced_sets(rules):
    """ipset names used by ``-m set --match-set NAME`` in the given token lists."""
    names = []
    for tokens in rules:
        for index, token in enumerate(tokens[:-1]):
            if token == "--match-set" and tokens[index + 1] not in names:
                names.append(tokens[index + 1])
    return names


def render_scratch(table, chains, rules_by_chain):
    """A restore batch that declares ``chains`` and fills the given chains (for the canonicalising round trip)."""
    builtins = set(BUILTIN_CHAINS[table])
    lines = ["*" + table]
    lines += [f":{name} - [0:0]" for name in chains if name not in builtins]
    for chain, rules in rules_by_chain.items():
        lines += [f"-A {chain} {render_tokens(rule)}" for rule in rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def describe(state, table, chain):
    """The owned chain and the jumps into it, as iptables-save lines (for diff mode)."""
    lines = []
    if chain in state.chains:
        lines.append(f":{chain}")
        lines += [f"-A {chain} {render_tokens(rule)}" for rule in state.rules_of(chain)]
    for parent, tokens in current_jumps(state, table, chain):
        lines.append(f"-A {parent} {render_tokens(tokens)}")
    return "\n".join(lines) + "\n" if lines else ""


def apply_plan_to_state(state, table, chain, plan, desired_rules, desired_jumps, present):
    """The table as it will look after the plan (for the diff's ``after``) without reading it again."""
    after = state.copy()
    for parent in BUILTIN_CHAINS[table]:
        after.set_rules(parent, [rule for rule in after.rules_of(parent) if not targets(rule, chain)])
    if present:
        after.chains[chain] = "-"
        after.set_rules(chain, state.rules_of(chain) if desired_rules is None else desired_rules)
        for parent, position, tokens in desired_jumps:
            if position == "first":
                after.rules_of(parent).insert(0, tokens)
            else:
                after.rules_of(parent).append(tokens)
    else:
        after.chains.pop(chain, None)
        after.set_rules(chain, [])
    return after


# ---------------------------------------------------------------------------------------------
# Many chains in one call


def merge_chain_specs(params):
    """The chain specs of a module call: ``chains`` with ``table`` and ``state`` taken from the top
    level where an entry leaves them out, or the single chain the top-level options describe."""
    if params.get("chains") is None:
        return [{key: params.get(key) for key in ("table", "chain", "rules", "jumps", "state")}]
    return [
        {
            "table": entry.get("table") or params.get("table"),
            "chain": entry.get("chain"),
            "rules": entry.get("rules"),
            "jumps": entry.get("jumps") or [],
            "state": entry.get("state") or params.get("state"),
        }
        for entry in params["chains"]
    ]


def merge_plans(plans):
    """One table's transaction from the plans of several chains, each kind of line in chain order:
    all chains are declared before any jump or rule needs them, and inserts keep the order
    separate runs in the same order would have produced."""
    merged = ChainPlan()
    for plan in plans:
        merged.declare += plan.declare
        merged.deletes += plan.deletes
        merged.appends += plan.appends
        merged.inserts += plan.inserts
        merged.destroy += plan.destroy
        merged.reasons += plan.reasons
    return merged


# A stand-in for a set a rule matches but the node does not have yet (check mode): the number of
# direction flags (``dst,dst,src``) is the set's dimension, which is all iptables checks.
def undo_batch(table, state, pairs):
    """The restore batch that puts ``table`` back as ``state`` (read before ``pairs``' plans were
    applied) for the chains of ``pairs``: jumps the plans inserted are deleted, jumps they deleted go
    back to where they stood, changed chains get their old rules back and chains they created go.
    What a later table's refusal leaves of a call that has already changed this one."""
    changed = [(wanted, plan) for wanted, plan in pairs if plan.changed]
    merged = merge_plans([plan for _wanted, plan in changed])
    undo = ChainPlan()
    for line in merged.inserts:
        verb, parent, rest = line.split(" ", 2)
        undo.deletes.append(f"-D {parent} {rest.split(' ', 1)[1] if verb == '-I' else rest}")
    standing = {}  # parent: [(position before the run, tokens)] still in the chain as the batch deleted
    restored = {}
    for line in merged.deletes:
        _verb, parent, rest = line.split(" ", 2)
        rules = standing.setdefault(parent, list(enumerate(state.rules_of(parent))))
        found = next(item for item in rules if render_tokens(item[1]) == rest)
        rules.remove(found)
        restored.setdefault(parent, []).append(found)
    for parent, rules in restored.items():
        undo.inserts += [f"-I {parent} {position + 1} {render_tokens(tokens)}" for position, tokens in sorted(rules)]
    for wanted, plan in changed:
        if not plan.declare:
            continue
        undo.declare.append(f":{wanted.chain} - [0:0]")
        if wanted.chain in state.chains:
            undo.appends += [f"-A {wanted.chain} {render_tokens(rule)}" for rule in state.rules_of(wanted.chain)]
        else:
            undo.destroy.append(f"-X {wanted.chain}")
    return undo.render(table)


_STAND_IN_TYPES = {1: "hash:ip", 2: "hash:ip,port", 3: "hash:ip,port,ip"}


def set_dimensions(rules):
    """{ipset name: number of direction flags} of ``-m set --match-set NAME FLAGS`` in the rules."""
    dimensions = {}
    for tokens in rules:
        for index, token in enumerate(tokens[:-1]):
            if token == "--match-set":
                flags = tokens[index + 2] if index + 2 < len(tokens) else "src"
                dimensions[tokens[index + 1]] = max(dimensions.get(tokens[index + 1], 0), len(flags.split(",")))
    return dimensions


def stand_in_set_line(name, dimension, family):
    """The ``ipset restore`` line of a stand-in set that accepts rules matching ``dimension`` flags."""
    set_type = _STAND_IN_TYPES[min(max(dimension, 1), 3)]
    return f"create {name} {set_type} family {INET[family]}"


# ---------------------------------------------------------------------------------------------
# Backends: which save/restore commands, which backend holds a table


# ---------------------------------------------------------------------------------------------
# A module call's chains, validated and planned


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
    validate_chain_name(table, chain)
    rules = None if spec["rules"] is None else [normalise_rule(rule, family) for rule in spec["rules"]]
    for name in referenced_sets(rules or []):
        # the name is an argument of the ipset tool when the scratch namespace recreates the set
        IPSET_NAME.check(name, "--match-set")
    jumps = []
    for jump in spec["jumps"] or []:
        if jump["chain"] not in BUILTIN_CHAINS[table]:
            raise KubeIpvsError(
                "jump from {} is not possible: the built-in chains of {} are {}".format(
                    jump["chain"], table, ", ".join(BUILTIN_CHAINS[table])
                )
            )
        jumps.append((jump["chain"], jump["position"], jump_tokens(jump, chain, family)))
    return DesiredChain(table, chain, rules, jumps, spec["state"] == "present")


def validate_all(specs, family, single):
    """Every spec validated before anything is read or changed; all problems reported at once."""
    if single:
        return [desired_chain(specs[0], family)]
    problems, seen = [], set()

    def validate(spec):
        if (spec["table"], spec["chain"]) in seen:
            raise KubeIpvsError("listed more than once")
        seen.add((spec["table"], spec["chain"]))
        return desired_chain(spec, family)

    desired = validate_each(specs, validate, lambda index, spec: f"chains[{index}] ({spec['table']}/{spec['chain']})",
                            problems)
    removed = {(wanted.table, wanted.chain) for wanted in desired if not wanted.present}
    for wanted in desired:
        for table, chain in removed:
            if wanted.present and wanted.table == table and any(targets(rule, chain) for rule in wanted.rules or []):
                problems.append(f"{table}/{wanted.chain}: its rules jump to {chain}, which this call removes")
    fail_on_problems(problems, "chains", "nothing was applied")
    return desired


def by_table(desired):
    """[(table, [DesiredChain])] in the order the tables first appear."""
    tables = {}
    for wanted in desired:
        tables.setdefault(wanted.table, []).append(wanted)
    return list(tables.items())


def plan_chains(state, table, wanted):
    """[(DesiredChain, ChainPlan)] of the chains of one table."""
    return [(one, plan_chain(state, table, one.chain, one.rules, one.jumps, one.present)) for one in wanted]


def not_predicted(pairs):
    """The chains whose planned rules or jumps may only differ because the normaliser's forms are not
    the kernel's: these go through the scratch-namespace round trip (which validates them, too)."""
    return [wanted for wanted, plan in pairs if wanted.present and (plan.appends or plan.inserts)]


def refuse_foreign_references(state, table, pairs):
    """Fail when a chain this call removes is still jumped to from a chain it does not own."""
    owned = {wanted.chain for wanted, _plan in pairs if wanted.rules is not None or not wanted.present}
    for wanted, plan in pairs:
        if not wanted.present and plan.destroy:
            foreign = foreign_references(state, table, wanted.chain, owned=owned)
            if foreign:
                raise KubeIpvsError(
                    "cannot remove {}/{}: chains this module does not own jump to it: {}".format(
                        table, wanted.chain, "; ".join(foreign)
                    ),
                    referencing_rules=foreign,
                )


def scratch_batch(table, state, wanted, declared):
    """(restore batch, rules) that apply ``wanted`` chains' rules and jumps in a scratch namespace:
    the table's chains and ``declared`` are declared, each parent gets its jumps in the order listed."""
    parents = {}
    for desired in wanted:
        for parent, _position, tokens in desired.jumps:
            parents.setdefault(parent, []).append(tokens)
    contents = {desired.chain: desired.rules or [] for desired in wanted}
    contents.update(parents)
    batch = render_scratch(table, list(dict.fromkeys([*state.chains, *declared])), contents)
    rules = [rule for desired in wanted for rule in desired.rules or []]
    rules += [tokens for tokens_list in parents.values() for tokens in tokens_list]
    return batch, rules


def take_canonical(scratch, wanted):
    """Give ``wanted`` chains the forms iptables printed for them in the scratch namespace's table
    ``scratch`` (a TableState): each parent holds their jumps, appended in the order listed."""
    by_parent, expected = {}, {}
    for desired in wanted:
        for parent, _position, _tokens in desired.jumps:
            by_parent.setdefault(parent, list(scratch.rules_of(parent)))
            expected[parent] = expected.get(parent, 0) + 1
    for parent, count in expected.items():
        if len(by_parent[parent]) != count:
            raise KubeIpvsError(f"iptables read the {count} jump(s) from {parent} back as {len(by_parent[parent])} "
                                "rule(s) (an address list or a host name in a jump's args?); give each jump one "
                                "rule's worth of args. Nothing was applied")
    for desired in wanted:
        if desired.rules is not None:
            desired.rules = scratch.rules_of(desired.chain)
        desired.jumps = [(parent, position, by_parent[parent].pop(0)) for parent, position, _tokens in desired.jumps]


def chain_results(planned, with_diff, single):
    """(results, described) of every chain of ``planned`` ({table: (backend, state, pairs)}): the
    chain's rules after the run, and (label, before, after) of the chains the diff shows."""
    results, described = [], []
    for table, (backend, state, pairs) in planned.items():
        after = state
        for wanted, plan in pairs:
            if plan.changed:
                after = apply_plan_to_state(after, table, wanted.chain, plan, wanted.rules, wanted.jumps,
                                            wanted.present)
        for wanted, plan in pairs:
            results.append({"table": table, "chain": wanted.chain, "changed": plan.changed, "backend": backend,
                            "rules": [render_tokens(rule) for rule in after.rules_of(wanted.chain)]})
            if with_diff and (single or plan.changed):
                described.append((f"{table}/{wanted.chain}", describe(state, table, wanted.chain),
                                  describe(after, table, wanted.chain)))
    return results, described
