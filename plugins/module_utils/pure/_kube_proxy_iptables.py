# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What kube-proxy in iptables mode writes on one node, as input of ``kubeipvs.node.iptables_chain``.

Pure functions (no Ansible, no API). Input is the ServicePort model of ``_kube_proxy_state``;
the rules follow kube-proxy's pkg/proxy/iptables/proxier.go (``syncProxyRules``,
``writeServiceToEndpointRules``, ``iptablesJumpChains``) and pkg/proxy/topology.go
(``CategorizeEndpoints``) token for token, in the order kube-proxy writes them, so chain names,
comments and probabilities are the ones a node running kube-proxy in iptables mode has.

Rule text is kube-proxy's iptables-restore input (``--probability 0.5000000000``, ``-m recent
--name X --rcheck --seconds N --reap``, ``--or-mark``); iptables-save prints some of it differently
(``0.50000000000``, ``--mask 255.255.255.255 --rsource``, ``--set-xmark``), which
``iptables_chain`` absorbs by canonicalising through iptables itself.

Modelled: ClusterIP, NodePort (all local addresses, or ``nodeport_addresses``), externalIPs,
load-balancer IPs with loadBalancerSourceRanges (``KUBE-FW-`` and filter
``KUBE-PROXY-FIREWALL``), internal and external traffic policy Local (``KUBE-SVL-``,
``KUBE-EXT-`` short-circuit rules), ClientIP session affinity, Services without (local)
endpoints (filter REJECT / DROP), health check node ports, masquerading (``cluster_cidr`` as
kube-proxy's ClusterCIDR local-traffic detector, or ``masquerade_all``), localhost NodePorts
(IPv4 ``KUBE-FIREWALL``), the large-cluster mode that drops per-endpoint comments above 1000
endpoints, and the jumps from the built-in chains.

Not modelled: topology-aware routing hints, other local-traffic detectors (bridge interface,
interface prefix, node CIDR), the nfacct counters (the ``--nfacct-name`` rules for localhost
NodePorts and INVALID drops need the counters to exist), the ``KUBE-PROXY-CANARY`` monitor
chains, and the ``route_localnet`` sysctl localhost NodePorts need.
"""

from __future__ import annotations

import base64
import hashlib

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import FAMILIES, IPV4, IPV6, VERSION, family_of
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import (
    as_cluster,
    check_node_ips,
    ip_families,
    parse_ip,
    parse_network,
    same_on_every_node,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPTABLES_DECLARED,
    IPTABLES_JUMPS,
    SERVICE_CHAIN_PREFIXES,
    addresses_in,
    node_port_networks,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._shared_run import SharedRun, SharedTail

LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold
LOOPBACK = {IPV4: "127.0.0.0/8", IPV6: "::1/128"}

# kubelet's chain: kube-proxy ensures it and its jumps in every family at every full sync, and
# writes its rule only where it serves localhost NodePorts (IPv4).
KUBELET_FIREWALL = ("filter", "KUBE-FIREWALL")


# ---------------------------------------------------------------------------------------------
# Names


def _hash16(text):
    """First 16 characters of base32(sha256(text)), as kube-proxy's portProtoHash (base32 turns each
    5 bytes into 8 characters: the first 10 bytes of the digest give the 16 characters)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


def port_proto_hash(service_port_name, protocol):
    """kube-proxy's portProtoHash: ``service_port_name`` is ``ns/name:port``, ``protocol`` lower case."""
    return _hash16(service_port_name + protocol)


def service_chain_name(prefix, service_port_name, protocol):
    """KUBE-SVC-, KUBE-SVL-, KUBE-EXT- or KUBE-FW- chain of a service port."""
    return prefix + port_proto_hash(service_port_name, protocol)


def endpoint_chain_name(service_port_name, protocol, endpoint):
    """kube-proxy's servicePortEndpointChainName; ``endpoint`` is ``ip:port`` (``[ip]:port`` for IPv6)."""
    return "KUBE-SEP-" + _hash16(service_port_name + protocol + endpoint)


def endpoint_text(endpoint):
    """An endpoint as Go's net.JoinHostPort prints it (kube-proxy's BaseEndpointInfo.String())."""
    address = endpoint.address
    return f"[{address}]:{endpoint.port}" if ":" in address else f"{address}:{endpoint.port}"


def probability(count):
    """kube-proxy's computeProbability: 1/count with ten decimals."""
    return f"{1.0 / count:0.10f}"


def masquerade_mark(bit):
    return f"0x{1 << bit:x}"


# ---------------------------------------------------------------------------------------------
# Endpoints as the iptables proxier sees them


class Categorized:
    """kube-proxy's CategorizeEndpoints result for one service port, as the iptables proxier uses it."""

    def __init__(self, sp):
        self.uses_cluster = not sp.internal_local or sp.external
        self.uses_local = sp.internal_local or (sp.external_local and sp.external)
        self.cluster, self.local = sp.cluster_endpoints, sp.local_endpoints
        self.has_any = bool(self.cluster)
        if self.uses_local:
            # Any ready (or serving and terminating) endpoint anywhere counts, local or not.
            self.has_any = self.has_any or any(e.ready or (e.serving and e.terminating) for e in sp.endpoints)
        if not self.uses_local:
            reachable = self.cluster
        elif not self.uses_cluster:
            reachable = self.local
        else:
            reachable = {endpoint_text(e): e for e in [*self.cluster, *self.local]}.values()
        # kube-proxy sorts a service's endpoints by their string; the merged list came from a map.
        self.reachable = sorted(reachable, key=endpoint_text)
        self.cluster = sorted(self.cluster, key=endpoint_text)
        self.local = sorted(self.local, key=endpoint_text)


# ---------------------------------------------------------------------------------------------
# Rendering


def rule(*parts):
    """One rule from tokens and token lists, quoted as iptables-restore reads it."""
    tokens = []
    for part in parts:  # most parts are a token or a flat list of tokens
        if isinstance(part, (list, tuple)):
            tokens.extend(_flatten(part))
        else:
            tokens.append(part)
    return " ".join([token if token and " " not in token else f'"{token}"' for token in map(str, tokens)])


def _flatten(parts):
    for part in parts:
        if isinstance(part, (list, tuple)):
            yield from _flatten(part)
        else:
            yield part


class Tables:
    """Rules per (table, chain), chains in the order kube-proxy declares them."""

    def __init__(self):
        self.chains = {}

    def declare(self, table, chain):
        self.chains.setdefault((table, chain), [])

    def add(self, table, chain, *parts):
        self.chains.setdefault((table, chain), []).append(rule(*parts))


class Recording:
    """Tables that also keep what one service port wrote, to write it again for another node:
    ``steps`` are ((table, chain), rules) of the chains every port writes into (KUBE-SERVICES and the
    like) in the order written, a chain's consecutive rules together. The port's own chains (its
    KUBE-SVC-, KUBE-SEP-... chains, which no other port writes) go to ``own`` instead of the tables."""

    def __init__(self, tables, own):
        self.tables, self.own, self.steps = tables, own, []

    def _rules(self, key):
        if key[1].startswith(SERVICE_CHAIN_PREFIXES):
            return self.own.setdefault(key, [])
        if not self.steps or self.steps[-1][0] != key:
            self.steps.append((key, []))
        return self.steps[-1][1]

    def declare(self, table, chain):
        self._rules((table, chain))
        if not chain.startswith(SERVICE_CHAIN_PREFIXES):
            self.tables.declare(table, chain)

    def add(self, table, chain, *parts):
        text = rule(*parts)
        self._rules((table, chain)).append(text)
        if not chain.startswith(SERVICE_CHAIN_PREFIXES):
            self.tables.chains.setdefault((table, chain), []).append(text)


def replay(tables, steps):
    chains = tables.chains
    for key, rules in steps:
        chains.setdefault(key, []).extend(rules)


class Options:
    def __init__(self, family, node_ips, cluster_cidr, masquerade_bit, random_fully, masquerade_all,
                 nodeport_addresses, localhost_nodeports, conntrack_tcp_be_liberal):
        if family not in FAMILIES:
            raise ValueError(f"family must be {' or '.join(FAMILIES)}, not {family!r}")
        check_node_ips(node_ips)
        self.family = family
        self.node_ips = [parse_ip(ip) for ip in node_ips if family_of(parse_ip(ip)) == family]
        self.cluster_cidr = None
        if cluster_cidr:
            self.cluster_cidr = parse_network(cluster_cidr)
            if self.cluster_cidr is None:
                raise ValueError(f"cluster_cidr: {cluster_cidr!r} is not a CIDR")
            if family_of(self.cluster_cidr) != family:
                raise ValueError(f"cluster_cidr: {cluster_cidr} is not an IPv{VERSION[family]} CIDR")
        if not 0 <= int(masquerade_bit) <= 31:
            raise ValueError(f"masquerade_bit must be 0-31, not {masquerade_bit}")
        self.mark = masquerade_mark(int(masquerade_bit))
        self.random_fully = random_fully
        self.masquerade_all = masquerade_all
        self.nodeport_addresses = None
        if nodeport_addresses is not None:
            check_node_ips(nodeport_addresses)
            self.nodeport_addresses = [parse_ip(ip) for ip in nodeport_addresses if family_of(parse_ip(ip)) == family]
        # kube-proxy accepts NodePorts on 127.0.0.0/8 only for IPv4 (it sets route_localnet for that).
        self.localhost_nodeports = bool(localhost_nodeports) and family == IPV4
        self.conntrack_tcp_be_liberal = conntrack_tcp_be_liberal
        # every option but the node IPs: the rules of a port that is the same on every node depend on these only
        self.fingerprint = (family, str(self.cluster_cidr), self.mark, bool(random_fully), bool(masquerade_all),
                            None if self.nodeport_addresses is None else tuple(map(str, self.nodeport_addresses)),
                            self.localhost_nodeports, bool(conntrack_tcp_be_liberal))

    @property
    def local_detector(self):
        return self.cluster_cidr is not None

    def if_not_local(self):
        return ["!", "-s", str(self.cluster_cidr)]

    def if_local(self):
        return ["-s", str(self.cluster_cidr)]


def write_endpoint_rules(tables, sp, chain, endpoints, large):
    """kube-proxy's writeServiceToEndpointRules: affinity checks, then the probability split."""
    name = sp.service_port_name
    protocol = sp.protocol.lower()

    def comment(text):
        return [] if large else ["-m", "comment", "--comment", text]

    if sp.affinity:
        for endpoint in endpoints:
            sep = endpoint_chain_name(name, protocol, endpoint_text(endpoint))
            tables.add("nat", chain, comment(f"{name} -> {endpoint_text(endpoint)}"),
                       "-m", "recent", "--name", sep, "--rcheck", "--seconds", str(sp.affinity), "--reap",
                       "-j", sep)
    for index, endpoint in enumerate(endpoints):
        sep = endpoint_chain_name(name, protocol, endpoint_text(endpoint))
        split = []
        if index < len(endpoints) - 1:
            split = ["-m", "statistic", "--mode", "random", "--probability", probability(len(endpoints) - index)]
        tables.add("nat", chain, comment(f"{name} -> {endpoint_text(endpoint)}"), split, "-j", sep)


def write_service_port(tables, sp, options, large):
    """What syncProxyRules writes for one service port."""
    name = sp.service_port_name
    protocol = sp.protocol.lower()
    svc = service_chain_name("KUBE-SVC-", name, protocol)
    svl = service_chain_name("KUBE-SVL-", name, protocol)
    ext = service_chain_name("KUBE-EXT-", name, protocol)
    fw = service_chain_name("KUBE-FW-", name, protocol)
    eps = Categorized(sp)

    uses_cluster_chain = bool(eps.cluster) and eps.uses_cluster
    uses_local_chain = bool(eps.local) and eps.uses_local
    internal_chain, has_internal = svc, eps.has_any
    if sp.internal_local:
        internal_chain, has_internal = svl, eps.has_any and bool(eps.local)
    external_policy_chain, has_external = svc, eps.has_any
    if sp.external_local:
        external_policy_chain, has_external = svl, eps.has_any and bool(eps.local)
    uses_ext = eps.has_any and sp.external
    uses_fw = eps.has_any and bool(sp.lb_ips) and bool(sp.source_ranges)
    lb_chain = fw if uses_fw else ext

    if not eps.has_any:
        internal_target = external_target = "REJECT"
        internal_comment = external_comment = f"{name} has no endpoints"
    else:
        internal_target = external_target = None
        internal_comment = external_comment = f"{name} has no local endpoints"
        if not has_internal:
            internal_target = "DROP"
        if not has_external:
            external_target = "DROP"

    def match(address, port):
        return ["-m", protocol, "-p", protocol] + (["-d", address] if address else []) + ["--dport", str(port)]

    cluster_ip_match = ["-m", "comment", "--comment", f"{name} cluster IP", match(sp.cluster_ip, sp.port)]
    if has_internal:
        tables.add("nat", "KUBE-SERVICES", cluster_ip_match, "-j", internal_chain)
    else:
        tables.add("filter", "KUBE-SERVICES", "-m", "comment", "--comment", internal_comment,
                   match(sp.cluster_ip, sp.port), "-j", internal_target)

    for external_ip in sp.external_ips:
        if eps.has_any:
            tables.add("nat", "KUBE-SERVICES", "-m", "comment", "--comment", f"{name} external IP",
                       match(external_ip, sp.port), "-j", ext)
        if not has_external:
            tables.add("filter", "KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", external_comment,
                       match(external_ip, sp.port), "-j", external_target)

    for lb_ip in sp.lb_ips:
        if eps.has_any:
            tables.add("nat", "KUBE-SERVICES", "-m", "comment", "--comment", f"{name} loadbalancer IP",
                       match(lb_ip, sp.port), "-j", lb_chain)
        if uses_fw:
            tables.add("filter", "KUBE-PROXY-FIREWALL", "-m", "comment", "--comment",
                       f"{name} traffic not accepted by {fw}", match(lb_ip, sp.port), "-j", "DROP")
    if not has_external:
        for lb_ip in sp.lb_ips:
            tables.add("filter", "KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", external_comment,
                       match(lb_ip, sp.port), "-j", external_target)

    if sp.node_port:
        if eps.has_any:
            # The nfacct-counted 127.0.0.0/8 variant needs the counter; kube-proxy skips it without one.
            tables.add("nat", "KUBE-NODEPORTS", "-m", "comment", "--comment", name,
                       match(None, sp.node_port), "-j", ext)
        if not has_external:
            tables.add("filter", "KUBE-EXTERNAL-SERVICES", "-m", "comment", "--comment", external_comment,
                       "-m", "addrtype", "--dst-type", "LOCAL", match(None, sp.node_port), "-j", external_target)

    if sp.health_check_node_port:
        tables.add("filter", "KUBE-NODEPORTS", "-m", "comment", "--comment", f"{name} health check node port",
                   "-m", "tcp", "-p", "tcp", "--dport", str(sp.health_check_node_port), "-j", "ACCEPT")

    if has_internal:
        if options.masquerade_all:
            tables.add("nat", internal_chain, cluster_ip_match, "-j", "KUBE-MARK-MASQ")
        elif options.local_detector:
            # Off-cluster traffic to a ClusterIP (a static route to the service range) may leave the node again.
            tables.add("nat", internal_chain, cluster_ip_match, options.if_not_local(), "-j", "KUBE-MARK-MASQ")

    if uses_ext:
        tables.declare("nat", ext)
        if not sp.external_local:
            tables.add("nat", ext, "-m", "comment", "--comment", f"masquerade traffic for {name} external destinations",
                       "-j", "KUBE-MARK-MASQ")
        else:
            if options.local_detector:
                tables.add("nat", ext, "-m", "comment", "--comment", f"pod traffic for {name} external destinations",
                           options.if_local(), "-j", svc)
            tables.add("nat", ext, "-m", "comment", "--comment",
                       f"masquerade LOCAL traffic for {name} external destinations",
                       "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ")
            tables.add("nat", ext, "-m", "comment", "--comment",
                       f"route LOCAL traffic for {name} external destinations",
                       "-m", "addrtype", "--src-type", "LOCAL", "-j", svc)
        if has_external:
            tables.add("nat", ext, "-j", external_policy_chain)

    if uses_fw:
        tables.declare("nat", fw)
        head = ["-m", "comment", "--comment", f"{name} loadbalancer IP"]
        node_ip = options.node_ips[0] if options.node_ips else None
        allow_from_node = False
        for source in sp.source_ranges:
            tables.add("nat", fw, head, "-s", str(source), "-j", ext)
            allow_from_node = allow_from_node or (node_ip is not None and node_ip in source)
        if allow_from_node:
            # A VIP-like load balancer's address is often local: a node's request loops back from the VIP.
            for lb_ip in sp.lb_ips:
                tables.add("nat", fw, head, "-s", lb_ip, "-j", ext)
        tables.add("nat", fw, "-m", "comment", "--comment",
                   f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL")

    if uses_cluster_chain:
        tables.declare("nat", svc)
        write_endpoint_rules(tables, sp, svc, eps.cluster, large)
    if uses_local_chain:
        tables.declare("nat", svl)
        write_endpoint_rules(tables, sp, svl, eps.local, large)

    for endpoint in eps.reachable:
        sep = endpoint_chain_name(name, protocol, endpoint_text(endpoint))
        comment = [] if large else ["-m", "comment", "--comment", name]
        # Hairpin: an endpoint reaching itself through the Service must be masqueraded.
        tables.add("nat", sep, comment, "-s", endpoint.address, "-j", "KUBE-MARK-MASQ")
        affinity = ["-m", "recent", "--name", sep, "--set"] if sp.affinity else []
        tables.add("nat", sep, comment, affinity, "-m", protocol, "-p", protocol,
                   "-j", "DNAT", "--to-destination", endpoint_text(endpoint))


def iptables_chains(service_ports, family, node_ips, cluster_cidr=None, masquerade_bit=14, random_fully=True,
                    masquerade_all=False, nodeport_addresses=None, localhost_nodeports=True,
                    conntrack_tcp_be_liberal=False, memo=None):
    """The nat and filter chains kube-proxy's iptables mode writes for one IP family, as
    ``kubeipvs.node.iptables_chain`` ``chains`` entries ({table, chain, rules, jumps}).

    ``service_ports`` comes from ``_kube_proxy_state.Cluster.service_ports`` for the same
    ``family`` ("ipv4" or "ipv6"). ``node_ips``: the node's addresses (the primary one of the family decides
    whether loadBalancerSourceRanges admit the node itself). ``cluster_cidr``: the pod CIDR of the
    family (kube-proxy's ``--cluster-cidr`` detector); None writes no off-cluster masquerade rule,
    as kube-proxy without a detector. ``nodeport_addresses``: None accepts NodePorts on every
    local address (kube-proxy's default), else the IPs to accept them on.
    ``conntrack_tcp_be_liberal``: the node's sysctl; when set kube-proxy writes no INVALID drop.
    ``memo``: a dict kept between the nodes of one cluster (``Cluster.memo``, given the same ports) - the
    rules of a port that are the same on every node are written once: its rules in the chains all ports
    share are copied for the next nodes, and its own chains are one ``SharedRun`` at the end of every
    node's list (after the chains with jumps and the rest in declaration order), the same items for all.
    The result is a ``SharedTail`` (a list).
    """
    options = Options(family, node_ips, cluster_cidr, masquerade_bit, random_fully, masquerade_all,
                      nodeport_addresses, localhost_nodeports, conntrack_tcp_be_liberal)
    tables = Tables()
    for table, chains in IPTABLES_DECLARED.items():
        for chain in chains:
            tables.declare(table, chain)

    tables.add("nat", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", f"{options.mark}/{options.mark}", "-j", "RETURN")
    # Clear the mark so a packet that traverses the stack again is not masqueraded twice.
    tables.add("nat", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", options.mark)
    tables.add("nat", "KUBE-POSTROUTING", "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
               "-j", "MASQUERADE", ["--random-fully"] if random_fully else [])
    tables.add("nat", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", options.mark)
    if options.localhost_nodeports:
        # Mitigates the route_localnet hole localhost NodePorts open (kubelet writes the same rule).
        tables.add("filter", "KUBE-FIREWALL", "-m", "comment", "--comment", "block incoming localnet connections",
                   "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
                   "RELATED,ESTABLISHED,DNAT", "-j", "DROP")

    large = sum(len(sp.endpoints) for sp in service_ports) > LARGE_CLUSTER_ENDPOINTS
    # With a memo, the first node records each port the same on every node: its rules in the shared
    # chains to replay for the next nodes, its own chains into one run that every node's list ends in.
    run_key = (options.fingerprint, large)
    run = None if memo is None else memo.get(run_key)
    own = {} if memo is not None and run is None else None
    for sp in service_ports:
        if memo is None or not same_on_every_node(sp):
            write_service_port(tables, sp, options, large)
        elif own is None:
            replay(tables, memo[(run_key, sp.service_port_name, sp.protocol)])
        else:
            recording = Recording(tables, own)
            write_service_port(recording, sp, options, large)
            memo[(run_key, sp.service_port_name, sp.protocol)] = recording.steps
    if own is not None:
        run = memo[run_key] = SharedRun([{"table": table, "chain": chain, "jumps": [], "rules": rules}
                                         for (table, chain), rules in own.items()])

    last = ["-m", "comment", "--comment",
            "kubernetes service nodeports; NOTE: this must be the last rule in this chain"]
    if options.nodeport_addresses is None:
        destinations = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if not options.localhost_nodeports:
            destinations += ["!", "-d", LOOPBACK[family]]
        tables.add("nat", "KUBE-SERVICES", last, destinations, "-j", "KUBE-NODEPORTS")
    else:
        for address in options.nodeport_addresses:
            if address.is_loopback and not options.localhost_nodeports:
                continue  # kube-proxy logs an error and skips it
            tables.add("nat", "KUBE-SERVICES", last, "-d", str(address), "-j", "KUBE-NODEPORTS")

    if not conntrack_tcp_be_liberal:
        # Out-of-window packets conntrack marks INVALID would otherwise reset connections (kubernetes#74839).
        tables.add("filter", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    tables.add("filter", "KUBE-FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules",
               "-m", "mark", "--mark", f"{options.mark}/{options.mark}", "-j", "ACCEPT")
    tables.add("filter", "KUBE-FORWARD", "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
               "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
    return SharedTail(chain_entries(tables), run)


def chain_entries(tables, jump_table=IPTABLES_JUMPS, kubelet_firewall=True):
    """iptables_chain entries: the chains that have jumps first, in kube-proxy's jump order (the
    module prepends missing jumps in list order, as kube-proxy does), then the rest in declaration
    order. ``kubelet_firewall``: whether kube-proxy ensures kubelet's KUBE-FIREWALL (iptables mode)."""
    jumps = {}
    for table, chain, parent, comment, args in jump_table:
        if (table, chain) in tables.chains or (kubelet_firewall and (table, chain) == KUBELET_FIREWALL):
            jump = {"chain": parent, "position": "first", "args": args}
            if comment:
                jump["comment"] = comment
            jumps.setdefault((table, chain), []).append(jump)
    order = list(jumps) + [key for key in tables.chains if key not in jumps]
    entries = []
    for table, chain in order:
        entry = {"table": table, "chain": chain, "jumps": jumps.get((table, chain), [])}
        # Without "rules" (kubelet's chain where kube-proxy writes no rule) the content is left alone.
        if (table, chain) in tables.chains:
            entry["rules"] = tables.chains[(table, chain)]
        entries.append(entry)
    return entries


def family_value(value, family):
    """The entry of a per-family option (``"10.244.0.0/16,fd00::/48"`` or a list) that is of ``family``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    for item in items:
        network = parse_network(item)
        if network is None:
            raise ValueError(f"cluster_cidr: {item!r} is not a CIDR")
        if family_of(network) == family:
            return str(item).strip()
    return None


def iptables_state(services, endpoint_slices, node_name, node_ips, cluster_cidr=None, families=(),
                   node_port_cidrs=None, node_addresses=None, **options):
    """{"ipv4": chains, "ipv6": chains} of a node: the families ``_kube_proxy_state.ip_families``
    picks from ``families``, each with its own node IPs and the ``cluster_cidr`` entry of that family (a
    comma-separated string or list, as kube-proxy's ``--cluster-cidr``). ``node_port_cidrs``: kube-proxy's
    nodePortAddresses, keywords expanded (``_kube_proxy_catalogue.node_port_cidrs``; None or empty:
    every local address); a family with CIDRs of its own, none of them a zero one, accepts NodePorts on
    the node's addresses in them - those of ``node_addresses`` (the node's local addresses; default
    ``node_ips``), and 127.0.0.1 where a CIDR holds it."""
    check_node_ips(node_ips)
    cluster = as_cluster(services, endpoint_slices)
    result = {}
    for family in ip_families(cluster, node_ips, families):
        family_ips = [str(ip) for ip in map(parse_ip, node_ips) if family_of(ip) == family]
        service_ports = cluster.service_ports(node_name, family)
        if node_port_cidrs is not None:
            options["nodeport_addresses"] = nodeport_addresses_in(
                node_port_networks(node_port_cidrs, family), node_ips if node_addresses is None else node_addresses)
        result[family] = iptables_chains(service_ports, family, family_ips, memo=cluster.memo.setdefault("iptables", {}),
                                         cluster_cidr=family_value(cluster_cidr, family), **options)
    return result


def nodeport_addresses_in(networks, addresses):
    """The addresses a proxier whose nodePortAddresses are ``networks`` lists (None: every local
    address, kube-proxy's ``--dst-type LOCAL``): the node's ``addresses`` in them, and the IPv4
    loopback address where one holds it (kube-proxy lists the addresses of every interface, lo too)."""
    return None if networks is None else addresses_in(networks, [*addresses, "127.0.0.1"])
