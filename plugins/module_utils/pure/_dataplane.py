# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube-proxy's dataplane objects: which mode owns a chain, set or table, which modes a node runs,
and the ordered plan that removes one mode's leftovers without touching anything else.

Pure logic only (no Ansible import, no I/O). The names are
``_kube_proxy_catalogue``'s (kube-proxy's own cleanup code: pkg/proxy/iptables/cleanup.go,
pkg/proxy/ipvs/proxier.go); see docs/mode-switch.md for the lists.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as iptables_lib
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES, IPV4, IPV6, NFT
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import scope_settings
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    DEFAULT_DUMMY_INTERFACE,
    IPTABLES_CHAINS,
    IPVS_CHAINS,
    KUBELET_CHAINS,
    NFT_TABLE,
    PROXY_MODES,
    SERVICE_CHAIN_PREFIXES,
    ipvs_set_names,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import validate_link_name

MODES = PROXY_MODES
TABLES = ("nat", "filter", "mangle")


def classify_chain(table, name):
    """Who a chain belongs to: ``iptables``, ``ipvs``, ``shared`` (both kube-proxy modes), ``kubelet``,
    ``unknown-kube`` (a KUBE- name no mode claims) or ``foreign``."""
    if name in KUBELET_CHAINS.get(table, ()):
        return "kubelet"
    in_iptables = name in IPTABLES_CHAINS.get(table, ()) or (
        table == "nat" and name.startswith(SERVICE_CHAIN_PREFIXES))
    in_ipvs = name in IPVS_CHAINS.get(table, ())
    if in_iptables and in_ipvs:
        return "shared"
    if in_iptables:
        return "iptables"
    if in_ipvs:
        return "ipvs"
    return "unknown-kube" if name.startswith("KUBE-") else "foreign"


def classify_set(name):
    """(``ipvs`` or ``unknown-kube`` or ``foreign``, family) of an ipset name."""
    for family in FAMILIES:
        if name in ipvs_set_names(family):
            return "ipvs", family
    if name.startswith("KUBE-"):
        return "unknown-kube", IPV6 if name.startswith("KUBE-6-") else IPV4
    return "foreign", None


def is_service_chain(name):
    return name.startswith(SERVICE_CHAIN_PREFIXES)


# ---------------------------------------------------------------------------------------------
# Node state: what the modules read, in one plain structure the pure functions work on.


class FamilyState:
    """One address family: iptables tables per backend, ipsets, owned IPVS services, the nft table."""

    def __init__(self, family):
        self.family = family
        self.tables = {}  # (backend, table) -> _iptables.TableState
        self.sets = []  # names of every ipset of this family's naming (the caller filters by family)
        self.ipvs_services = []  # labels of owned IPVS services of this family
        self.nft_table = False
        self.nft_service_ports = []  # "tcp/10.96.0.10:53" keys of the kube-proxy table's service map


class NodeState:
    def __init__(self):
        self.families = {family: FamilyState(family) for family in FAMILIES}
        self.dummy_link = None  # name when the dummy interface exists
        self.dummy_addresses = []


def _chains(family_state, table):
    names = []
    for (_backend, name), state in family_state.tables.items():
        if name == table:
            names += [chain for chain in state.chains if chain not in names]
    return names


def _nat_services_jumps_to_services(family_state):
    for (_backend, table), state in family_state.tables.items():
        texts = state.raw.get("KUBE-SERVICES", ()) if table == "nat" else ()
        if any("KUBE-SVC-" in text or "KUBE-NODEPORTS" in text for text in texts):
            return True
    return False


def evidence(family_state, dummy_link=None):
    """{mode: [reasons]} for the modes this family shows (empty lists for modes not present).

    Shared chains prove nothing by themselves (both kube-proxy modes make them, and so does the
    collection's node role), so only objects one mode alone makes count.
    """
    found = {mode: [] for mode in MODES}
    for table in TABLES:
        for chain in _chains(family_state, table):
            owner = classify_chain(table, chain)
            if owner in ("iptables", "ipvs"):
                found[owner].append(f"{table}/{chain}")
    if _nat_services_jumps_to_services(family_state):
        found["iptables"].append("nat/KUBE-SERVICES jumps to KUBE-SVC-/KUBE-NODEPORTS")
    for name in family_state.sets:
        owner, set_family = classify_set(name)
        if owner == "ipvs" and set_family == family_state.family:
            found["ipvs"].append(f"ipset {name}")
    found["ipvs"] += [f"ipvs {label}" for label in family_state.ipvs_services]
    if dummy_link:
        found["ipvs"].append(f"link {dummy_link}")
    if family_state.nft_table:
        found["nftables"].append(f"nft table {NFT[family_state.family]} {NFT_TABLE}")
    return found


def infer_mode(node, families=FAMILIES):
    """(mode, modes present, evidence per mode): ``none``, one of MODES, or ``mixed``."""
    merged = {mode: [] for mode in MODES}
    for family in families:
        for mode, reasons in evidence(node.families[family], node.dummy_link).items():
            merged[mode] += [reason for reason in reasons if reason not in merged[mode]]
    present = [mode for mode in MODES if merged[mode]]
    if not present:
        return "none", present, merged
    return (present[0] if len(present) == 1 else "mixed"), present, merged


# ---------------------------------------------------------------------------------------------
# Cleanup plan


class TablePlan:
    """One iptables-restore --noflush transaction: rule deletions (jumps first), flushes, chain deletions."""

    def __init__(self, backend, family, table):
        self.backend = backend
        self.family = family
        self.table = table
        self.rule_deletes = []  # (chain, tokens)
        self.chains = []  # chains to flush and delete, in deletion order

    @property
    def changed(self):
        return bool(self.rule_deletes or self.chains)

    def render(self):
        if not self.changed:
            return ""
        lines = ["*" + self.table]
        lines += [f"-D {chain} {iptables_lib.render_tokens(tokens)}" for chain, tokens in self.rule_deletes]
        lines += [f":{chain} - [0:0]" for chain in self.chains]  # declaring a chain under --noflush flushes it
        lines += [f"-X {chain}" for chain in self.chains]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def describe(self):
        where = f"{self.backend}/{self.family}/{self.table}"
        return {"backend": self.backend, "family": self.family, "table": self.table,
                "rules": [f"-A {chain} {iptables_lib.render_tokens(tokens)}" for chain, tokens in self.rule_deletes],
                "chains": list(self.chains), "where": where}


class CleanupPlan:
    """Everything one mode's cleanup removes, in the order it must go."""

    def __init__(self, mode):
        self.mode = mode
        self.tables = []  # TablePlan, applied first (rules and chains)
        self.sets = []  # ipset names, destroyed after every rule that matched them is gone
        self.ipvs_services = []  # labels (the module keeps the Service objects)
        self.links = []
        self.nft_tables = []  # (nft family, name)
        self.kept_shared = []  # shared chains left because the other kube-proxy mode is live

    @property
    def changed(self):
        return bool([table for table in self.tables if table.changed] or self.sets or self.ipvs_services
                    or self.links or self.nft_tables)

    def summary(self):
        return {
            "iptables": [table.describe() for table in self.tables if table.changed],
            "ipsets": list(self.sets),
            "ipvs_services": list(self.ipvs_services),
            "links": list(self.links),
            "nftables_tables": [f"{family} {name}" for family, name in self.nft_tables],
        }


class ForeignReference(Exception):
    """A chain or set to remove is still used by a rule this module must not touch."""

    def __init__(self, references):
        super().__init__("; ".join(references))
        self.references = references


def _references(tokens, chains, sets):
    if any(tokens[index] in ("-j", "-g") and tokens[index + 1] in chains for index in range(len(tokens) - 1)):
        return True
    return bool(sets) and any(name in sets for name in iptables_lib.referenced_sets([tokens]))


def _doomed_chains(mode, table, chains, other_mode_live):
    """(chains to remove, shared chains kept) of ``table`` for ``mode``, in deletion order."""
    doomed = []
    kept = []
    for chain in chains:
        owner = classify_chain(table, chain)
        if owner == mode:
            doomed.append(chain)
        elif owner == "shared":
            (kept if other_mode_live else doomed).append(chain)
    return doomed, kept


def plan_table(mode, backend, family, table, state, other_mode_live, doomed_sets=()):
    """The transaction that removes ``mode``'s chains of one table, and the rules that point at them.

    Rules are deleted from built-in chains and from kept kube-proxy chains when they jump to a
    removed chain or match a removed set. A rule in any other chain (kubelet's, foreign ones) that
    does so raises ForeignReference: nothing is planned around objects this module does not own.
    """
    plan = TablePlan(backend, family, table)
    doomed, kept = _doomed_chains(mode, table, list(state.chains), other_mode_live)
    doomed_set = set(doomed)
    sets = set(doomed_sets)
    builtins = iptables_lib.BUILTIN_CHAINS.get(table, ())
    cleaned_parents = list(builtins) + kept
    foreign = []
    for parent in state.rule_chains():
        if parent in doomed_set:
            continue  # flushed as a whole
        texts = state.raw.get(parent, ())
        if parent not in state.parsed and not any(
                chain in text for text in texts for chain in doomed_set) and not any(
                name in text for text in texts for name in sets):
            continue  # cheap text test first: most chains mention nothing we remove
        for tokens in state.rules_of(parent):
            if not _references(tokens, doomed_set, sets):
                continue
            if parent in cleaned_parents:
                plan.rule_deletes.append((parent, tokens))
            else:
                foreign.append(f"{backend}/{family}/{table}: -A {parent} {iptables_lib.render_tokens(tokens)}")
    if foreign:
        raise ForeignReference(foreign)
    # Jumps from built-in chains first, then rules in kept kube-proxy chains (already in that order).
    plan.rule_deletes.sort(key=lambda item: 0 if item[0] in builtins else 1)
    plan.chains = doomed
    return plan, kept


def other_mode_live(mode, family_state, dummy_link):
    """Whether the kube-proxy mode that shares chains with ``mode`` still shows in this family."""
    other = {"iptables": "ipvs", "ipvs": "iptables"}.get(mode)
    if other is None:
        return False
    return bool(evidence(family_state, dummy_link)[other])


def plan_cleanup(mode, node, families=FAMILIES, dummy_interface=DEFAULT_DUMMY_INTERFACE):
    """The ordered CleanupPlan of ``mode`` for the given families (raises ForeignReference)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    plan = CleanupPlan(mode)
    foreign = []
    for family in families:
        family_state = node.families[family]
        if mode == "nftables":
            if family_state.nft_table:
                plan.nft_tables.append((NFT[family], NFT_TABLE))
            continue
        # For the ipvs mode, the family's own kube-proxy sets go (the ones no foreign rule matches).
        doomed_sets = []
        if mode == "ipvs":
            own = ipvs_set_names(family)
            doomed_sets = [name for name in family_state.sets if name in own]
        live = other_mode_live(mode, family_state, node.dummy_link if mode == "iptables" else None)
        for (backend, table), state in sorted(family_state.tables.items()):
            try:
                table_plan, kept = plan_table(mode, backend, family, table, state, live, doomed_sets)
            except ForeignReference as error:
                foreign += error.references
                continue
            plan.tables.append(table_plan)
            plan.kept_shared += [f"{backend}/{family}/{table}/{chain}" for chain in kept]
        plan.sets += doomed_sets
        if mode == "ipvs":
            plan.ipvs_services += family_state.ipvs_services
    if foreign:
        raise ForeignReference(foreign)
    if mode == "ipvs" and node.dummy_link and node.dummy_link == dummy_interface:
        plan.links.append(node.dummy_link)
    return plan


def objects_of(mode, node, families=FAMILIES):
    """Sorted text names of every object ``mode`` could own on the node (the diff's before/after)."""
    names = []
    for family in families:
        family_state = node.families[family]
        if mode == "nftables":
            if family_state.nft_table:
                names.append(f"nft table {NFT[family]} {NFT_TABLE}")
            continue
        for (backend, table), state in sorted(family_state.tables.items()):
            for chain in state.chains:
                if classify_chain(table, chain) in (mode, "shared"):
                    names.append(f"chain {backend}/{family}/{table}/{chain}")
        if mode == "ipvs":
            own = ipvs_set_names(family)
            names += [f"ipset {name}" for name in family_state.sets if name in own]
            names += [f"ipvs {label}" for label in family_state.ipvs_services]
    if mode == "ipvs" and node.dummy_link:
        names.append(f"link {node.dummy_link}")
    return sorted(set(names))


# ---------------------------------------------------------------------------------------------
# Service ports: which VIP . protocol . port each mode answers on (the switch's verification).


def port_label(protocol, address, port):
    """``tcp/10.96.0.10:53`` or ``tcp/[fd00::10]:53`` - the spelling of IPVS service labels."""
    host = f"[{address}]" if ":" in str(address) else str(address)
    return f"{str(protocol).lower()}/{host}:{port}"


PORT_LABEL_PROTOCOLS = ("tcp", "udp", "sctp")


def check_port_labels(labels, what):
    """``labels`` as a set, each checked to be spelled as ``port_label`` spells it; ValueError naming
    the first that is not (its index in ``what``) and how to write it."""
    checked = set()
    for index, label in enumerate(labels):
        protocol, _slash, rest = str(label).partition("/")
        host, _colon, port = rest.rpartition(":")
        address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            canonical = (protocol in PORT_LABEL_PROTOCOLS and port.isdigit() and 0 < int(port) < 65536
                         and (":" in address) == host.startswith("[")
                         and port_label(protocol, ipaddress.ip_address(address), int(port)))
        except ValueError:
            canonical = None
        if canonical != label:
            raise ValueError(f"{what}[{index}]: {label!r} is not a service port; write it as protocol/address:port "
                             "(tcp, udp or sctp; an IPv6 address in brackets), e.g. tcp/10.96.0.1:443 or "
                             "udp/[fd00::a]:53" + (f" - here {canonical}" if canonical else ""))
        checked.add(label)
    return checked


def missing_service_ports(expected, served, modes):
    """Per mode of ``modes`` (the modes a node shows), the ``expected`` ports its ``served`` list lacks, sorted."""
    return {mode: sorted(expected.difference(served[mode])) for mode in modes if mode in served}


def _option(tokens, *names):
    for index, token in enumerate(tokens[:-1]):
        if token in names:
            return tokens[index + 1]
    return None


def iptables_service_ports(family_state):
    """The VIP ports iptables mode handles: nat KUBE-SERVICES rules that match a destination
    address, protocol and port and jump to a per-service chain, and filter KUBE-SERVICES rules
    that reject or drop such a port (a Service without endpoints; DROP for internalTrafficPolicy
    Local without a local one)."""
    ports = set()
    for (_backend, table), state in family_state.tables.items():
        if table not in ("nat", "filter"):
            continue
        for tokens in state.rules_of("KUBE-SERVICES"):
            target, address = _option(tokens, "-j"), _option(tokens, "-d")
            protocol, port = _option(tokens, "-p"), _option(tokens, "--dport")
            if not (target and address and protocol and port):
                continue
            if is_service_chain(target) if table == "nat" else target in ("REJECT", "DROP"):
                ports.add(port_label(protocol, address.split("/", 1)[0], port))
    return sorted(ports)


def nftables_service_ports(document):
    """The keys of one of nftables mode's ``service-ips`` and ``no-endpoint-services`` maps from
    ``nft -j list map`` output (parsed JSON)."""
    ports = set()
    for item in document.get("nftables", []):
        nft_map = item.get("map") if isinstance(item, dict) else None
        for element in (nft_map or {}).get("elem") or []:
            key = element[0] if isinstance(element, list) and element else element
            if isinstance(key, dict) and "elem" in key:  # an element with a comment or timeout
                key = key["elem"].get("val")
            parts = key.get("concat") if isinstance(key, dict) else None
            if isinstance(parts, list) and len(parts) == 3:
                ports.add(port_label(parts[1], parts[0], parts[2]))
    return sorted(ports)


def service_ports(node, families=FAMILIES):
    """Per mode, the sorted VIP ports (``tcp/10.96.0.10:53``) the node's dataplane serves."""
    result = {mode: [] for mode in MODES}
    for family in families:
        family_state = node.families[family]
        result["iptables"] += iptables_service_ports(family_state)
        result["ipvs"] += sorted(label for label in family_state.ipvs_services if not label.startswith("fwmark/"))
        result["nftables"] += family_state.nft_service_ports
    return result


def removed_names(plan):
    """The text names of the objects a plan removes (same spelling as ``objects_of``)."""
    names = []
    for table in plan.tables:
        names += [f"chain {table.backend}/{table.family}/{table.table}/{chain}" for chain in table.chains]
    names += [f"ipset {name}" for name in plan.sets]
    names += [f"ipvs {label}" for label in plan.ipvs_services]
    names += [f"link {name}" for name in plan.links]
    names += [f"nft table {family} {name}" for family, name in plan.nft_tables]
    return set(names)


def validate_scope(scope):
    """The checked settings of a ``scope`` option (see ``_ipvs_plan.scope_settings``), the link
    defaulting to kube-ipvs0; KubeIpvsError naming the bad value, before any read."""
    settings = scope_settings(scope)
    settings["dummy_interface"] = settings["dummy_interface"] or DEFAULT_DUMMY_INTERFACE
    validate_link_name(settings["dummy_interface"])
    return settings
