# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The iptables rules kube-proxy's IPVS mode writes on one node, as input of ``kubeipvs.node.iptables_chain``.

Pure functions (no Ansible, no API). IPVS mode's rules do not name Services: they match kube-proxy's
ipsets, so the input is the members of those sets (``_kube_proxy_state.node_state``'s ``ipsets``)
plus the masquerade options. The rules follow kube-proxy's pkg/proxy/ipvs/proxier.go (``writeIptablesRules``,
``acceptIPVSTraffic``, ``ipsetWithIptablesChain``, ``iptablesJumpChain``) token for token and in
its order, as its iptables-restore input; iptables-save prints some of it differently
(``--set-xmark``, ``! -s`` moved to the front, the REJECT type), which ``iptables_chain`` absorbs by
canonicalising through iptables itself.

kube-proxy writes several rules only while their set has members and the others always; every
chain it declares is rewritten whole at each sync, so a node the collection programmed and one
kube-proxy programmed read the same.

Not modelled: the local-traffic detectors other than the cluster CIDR (bridge interface,
interface prefix, node CIDR).
"""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._dataplane import classify_chain
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPSET_TYPES,
    IPVS_DECLARED,
    IPVS_JUMPS,
    ipset_name,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_iptables import (
    LOOPBACK,
    Tables,
    family_value,
    chain_entries,
    masquerade_mark,
)

# kube-proxy's ipsetInfo comments, quoted into the rules that match the set.
COMMENTS = {
    "KUBE-LOOP-BACK": "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    "KUBE-CLUSTER-IP": "Kubernetes service cluster ip + port for masquerade purpose",
    "KUBE-EXTERNAL-IP": "Kubernetes service external ip + port for masquerade and filter purpose",
    "KUBE-EXTERNAL-IP-LOCAL": "Kubernetes service external ip + port with externalTrafficPolicy=local",
    "KUBE-LOAD-BALANCER": "Kubernetes service lb portal",
    "KUBE-LOAD-BALANCER-FW": "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    "KUBE-LOAD-BALANCER-LOCAL": "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    "KUBE-LOAD-BALANCER-SOURCE-IP": "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR":
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    "KUBE-NODE-PORT-TCP": "Kubernetes nodeport TCP port for masquerade purpose",
    "KUBE-NODE-PORT-LOCAL-TCP": "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    "KUBE-NODE-PORT-UDP": "Kubernetes nodeport UDP port for masquerade purpose",
    "KUBE-NODE-PORT-LOCAL-UDP": "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    "KUBE-NODE-PORT-SCTP-HASH": "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH":
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    "KUBE-HEALTH-CHECK-NODE-PORT": "Kubernetes health check node port",
}
# How a rule matches each set's members (kube-proxy's ipset type -> match flags).
FLAGS = {"hash:ip,port": "dst,dst", "hash:ip,port,ip": "dst,dst,src", "hash:ip,port,net": "dst,dst,src",
         "bitmap:port": "dst", "hash:ip": "dst"}
# ipsetWithIptablesChain: (set, table, chain, target, protocol), written in this order when the set has members.
SET_RULES = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "MASQUERADE", ""),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", ""),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "RETURN", ""),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", ""),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "RETURN", ""),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "RETURN", "tcp"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "tcp"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "RETURN", "udp"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "udp"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "RETURN", "sctp"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "sctp"),
)


class Sets:
    """kube-proxy's ipsets of one family (``node_state``'s ``ipsets``, keyed by the family's names):
    which have members, and the match of each."""

    def __init__(self, ipsets, family):
        self.ipsets, self.family = ipsets, family

    def name(self, name):
        return ipset_name(name, self.family)

    def filled(self, name):
        return bool(self.ipsets.get(self.name(name)))

    def match(self, name):
        return ["-m", "set", "--match-set", self.name(name), FLAGS[IPSET_TYPES[name]]]

    def commented(self, name):
        return ["-m", "comment", "--comment", COMMENTS[name], *self.match(name)]

    def lb_no_node_access(self):
        """(address, protocol, port) of the load-balancer IPs whose source ranges leave the node's
        primary address out: in KUBE-LOAD-BALANCER-FW, without their KUBE-LOAD-BALANCER-SOURCE-IP entry."""
        admitted = {member.rsplit(",", 1)[0] for member in self.ipsets.get(self.name("KUBE-LOAD-BALANCER-SOURCE-IP"), [])}
        result = []
        for member in self.ipsets.get(self.name("KUBE-LOAD-BALANCER-FW"), []):
            if member not in admitted:
                address, protocol_port = member.split(",")
                protocol, port = protocol_port.split(":")
                result.append((address, protocol, int(port)))
        return sorted(result)


def ipvs_iptables_chains(ipsets, family, cluster_cidr=None, masquerade_bit=14, masquerade_all=False):
    """The nat and filter chains kube-proxy's IPVS mode writes for one IP family, as
    ``kubeipvs.node.iptables_chain`` ``chains`` entries ({table, chain, rules, jumps}).

    ``ipsets``: set name -> members, ``node_state``'s ``ipsets`` (names of every family).
    ``cluster_cidr``: the pod CIDR of the family (the ClusterCIDR local-traffic detector), None for
    none - ClusterIP traffic from a Service address is then masqueraded instead of traffic from
    outside the CIDR.
    """
    mark = masquerade_mark(int(masquerade_bit))
    sets = Sets(ipsets, family)
    tables = Tables()
    for table, chains in IPVS_DECLARED.items():
        for chain in chains:
            tables.declare(table, chain)

    tables.add("nat", "KUBE-SERVICES", "-s", LOOPBACK[family], "-j", "RETURN")
    for name, table, chain, target, protocol in SET_RULES:
        if sets.filled(name):
            tables.add(table, chain, ["-p", protocol] if protocol else [], sets.commented(name), "-j", target)

    if sets.filled("KUBE-CLUSTER-IP"):
        if masquerade_all:
            cluster_ip = [sets.commented("KUBE-CLUSTER-IP")]
        elif cluster_cidr:
            cluster_ip = [sets.commented("KUBE-CLUSTER-IP"), "!", "-s", cluster_cidr]
        else:  # no detector: masquerade what a Service address sends (the node's own traffic)
            cluster_ip = ["-m", "comment", "--comment", COMMENTS["KUBE-CLUSTER-IP"], "-m", "set", "--match-set",
                          sets.name("KUBE-CLUSTER-IP"), "src,dst"]
        tables.add("nat", "KUBE-SERVICES", cluster_ip, "-j", "KUBE-MARK-MASQ")
    from_outside = ["-m", "physdev", "!", "--physdev-is-in", "-m", "addrtype", "!", "--src-type", "LOCAL"]
    to_local = ["-m", "addrtype", "--dst-type", "LOCAL"]
    if sets.filled("KUBE-EXTERNAL-IP"):
        tables.add("nat", "KUBE-SERVICES", sets.commented("KUBE-EXTERNAL-IP"), "-j", "KUBE-MARK-MASQ")
        # External traffic to external IPs is accepted here: IPVS then handles it.
        tables.add("nat", "KUBE-SERVICES", sets.commented("KUBE-EXTERNAL-IP"), from_outside, "-j", "ACCEPT")
        tables.add("nat", "KUBE-SERVICES", sets.commented("KUBE-EXTERNAL-IP"), to_local, "-j", "ACCEPT")
    if sets.filled("KUBE-EXTERNAL-IP-LOCAL"):
        tables.add("nat", "KUBE-SERVICES", sets.commented("KUBE-EXTERNAL-IP-LOCAL"), from_outside, "-j", "ACCEPT")
        tables.add("nat", "KUBE-SERVICES", sets.commented("KUBE-EXTERNAL-IP-LOCAL"), to_local, "-j", "ACCEPT")
    tables.add("nat", "KUBE-SERVICES", to_local, "-j", "KUBE-NODE-PORT")
    tables.add("nat", "KUBE-LOAD-BALANCER", "-j", "KUBE-MARK-MASQ")
    tables.add("filter", "KUBE-SOURCE-RANGES-FIREWALL", "-j", "DROP")
    for address, protocol, port in sets.lb_no_node_access():
        tables.add("filter", "KUBE-IPVS-OUT-FILTER", "-s", address, "-m", "ipvs", "--vaddr", address,
                   "--vproto", protocol, "--vport", str(port), "-j", "DROP")
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):  # acceptIPVSTraffic
        if sets.filled(name):
            tables.add("nat", "KUBE-SERVICES", sets.match(name), "-j", "ACCEPT")

    tables.add("filter", "KUBE-FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules",
               "-m", "mark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT")
    tables.add("filter", "KUBE-FORWARD", "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
               "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    tables.add("filter", "KUBE-NODE-PORT", sets.commented("KUBE-HEALTH-CHECK-NODE-PORT"), "-j", "ACCEPT")
    # New connections to a Service address on a port no Service has are refused (kubernetes#72236).
    for name in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
                 "KUBE-HEALTH-CHECK-NODE-PORT"):
        tables.add("filter", "KUBE-IPVS-FILTER", sets.match(name), "-j", "RETURN")
    tables.add("filter", "KUBE-IPVS-FILTER", "-m", "conntrack", "--ctstate", "NEW", sets.match("KUBE-IPVS-IPS"),
               "-j", "REJECT")

    tables.add("nat", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    tables.add("nat", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", mark)
    # kube-proxy's IPVS mode always asks for fully random source ports here.
    tables.add("nat", "KUBE-POSTROUTING", "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
               "-j", "MASQUERADE", "--random-fully")
    tables.add("nat", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", mark)
    return chain_entries(tables, IPVS_JUMPS, kubelet_firewall=False)


def without_shared_chains(chains):
    """``chains`` less the ones iptables mode writes too (and their jumps): what can be programmed
    while a kube-proxy in iptables mode still runs on the node - it rewrites those, and IPVS mode's
    content in its KUBE-SERVICES would stop it from translating."""
    return [chain for chain in chains if classify_chain(chain["table"], chain["chain"]) != "shared"]


def ipvs_iptables_state(ipsets, cluster_cidr=None, masquerade_bit=14, masquerade_all=False):
    """{"ipv4": chains, "ipv6": chains}: IPVS mode's chains for every family ``ipsets`` has
    (``node_state``'s), each with the ``cluster_cidr`` entry of that family (a comma-separated
    string or list, as kube-proxy's ``--cluster-cidr``)."""
    families = [family for family in (IPV4, IPV6) if ipset_name("KUBE-CLUSTER-IP", family) in ipsets]
    return {family: ipvs_iptables_chains(ipsets, family, family_value(cluster_cidr, family), masquerade_bit,
                                         masquerade_all)
            for family in families}


# The chains a node provisioned for IPVS mode gets before kube-proxy runs (the ipvs_node role):
# these two with the rules kube-proxy writes into them, every other chain only created with its jumps.
BASELINE_OWNED = (("nat", "KUBE-MARK-MASQ"), ("nat", "KUBE-POSTROUTING"))


def baseline_chains(family, masquerade_bit=14, loopback_members=0):
    """IPVS mode's baseline for one family, as ``kubeipvs.node.iptables_chain`` ``chains`` entries:
    KUBE-MARK-MASQ and KUBE-POSTROUTING with exactly kube-proxy's rules, then each chain kube-proxy
    jumps to from a built-in chain with only those jumps (the chain is created when missing; its
    rules stay kube-proxy's). ``loopback_members``: how many members the family's KUBE-LOOP-BACK set
    has now - kube-proxy writes the hairpin MASQUERADE rule only while it has some, so the baseline
    follows it rather than fight it."""
    if not 0 <= int(masquerade_bit) <= 31:
        raise ValueError(f"masquerade_bit must be 0-31, not {masquerade_bit}")
    ipsets = {ipset_name("KUBE-LOOP-BACK", family): ["hairpin"] if int(loopback_members) > 0 else []}
    entries = ipvs_iptables_chains(ipsets, family, masquerade_bit=masquerade_bit)
    owned = [entry for key in BASELINE_OWNED for entry in entries if (entry["table"], entry["chain"]) == key]
    jumped = [{"table": entry["table"], "chain": entry["chain"], "jumps": entry["jumps"]} for entry in entries
              if entry["jumps"] and (entry["table"], entry["chain"]) not in BASELINE_OWNED]
    return owned + jumped
