# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What kube-proxy in nftables mode programs on one node: the ``kube-proxy`` table of each family.

Pure functions (no Ansible, no API). The facts follow kube-proxy v1.37's pkg/proxy/nftables/proxier.go
(setupNFTables, syncProxyRules, writeServiceToEndpointDNATs and writeServiceToEndpointJumps,
servicePortChainNameBase, servicePortEndpointChainNameBase) and pkg/proxy/topology.go
(CategorizeEndpoints), and tests/integration/test_parity_netns.py holds the output to what the real
kube-proxy writes; the Services
come from _kube_proxy_state.Cluster.service_ports, shared with the IPVS renderer. The output is the
body of ``table <family> kube-proxy { ... }`` in nft syntax, the input of the nftables_table module.

Unlike IPVS mode, a Service whose traffic policy is Local and that has no local endpoint gets no
fallback to cluster-wide endpoints: its traffic is dropped, as upstream does.

Not modelled: topology-aware routing hints (zones), the ``--nodeport-addresses`` CIDR filter (the
caller passes the addresses NodePorts listen on, or asks for all local addresses), and the
health-check node ports (kube-proxy serves those from its own HTTP server, not from nftables).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6, NFT, VERSION, family_of
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    NFT_NO_ENDPOINT_MAP as NO_ENDPOINT_SERVICES_MAP,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    NFT_SERVICE_MAP as SERVICE_IPS_MAP,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    RENDERED_VERSIONS,
    addresses_in,
    check_version,
    node_port_networks,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import (
    as_cluster,
    check_node_ips,
    ip_families,
    ip_key,
    memoized,
    parse_ip,
    parse_network,
    same_on_every_node,
)

TABLE_NAME = "kube-proxy"
NAME_LENGTH_MAX = 256  # knftables.NameLengthMax
CHAIN_NAME_PREFIX_LENGTH_MAX = 16
CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - CHAIN_NAME_PREFIX_LENGTH_MAX

# Stock chains, sets and maps (proxier.go constants).
SERVICES_CHAIN = "services"
SERVICE_NODEPORTS_MAP = "service-nodeports"
NODEPORT_IPS_SET = "nodeport-ips"
CLUSTER_IPS_SET = "cluster-ips"
SERVICE_ENDPOINTS_CHECK_CHAIN = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK_CHAIN = "nodeport-endpoints-check"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK_CHAIN = "cluster-ips-check"
FIREWALL_IPS_MAP = "firewall-ips"
FIREWALL_CHECK_CHAIN = "firewall-check"
MASQUERADING_CHAIN = "masquerading"
HAIRPIN_SET = "hairpin-connections"
# Before v1.36 kube-proxy marked traffic for masquerading by jumping to this chain (from each
# Service's internal chain, its external chain and every endpoint chain); since then it sets the
# mark inline and masquerades hairpin traffic through HAIRPIN_SET.
MARK_MASQ_CHAIN = "mark-for-masquerade"
MARK_CHAIN_RELEASE = (1, 36)
# Since v1.37 a Service port with one endpoint (and no affinity) is a plain DNAT, not a numgen map.
SINGLE_DNAT_RELEASE = (1, 37)

# Base chains: (name, type, hook, priority), in upstream's order. kube-proxy asks for "dstnat-10"
# and friends; nft accepts the names dstnat/srcnat only on some hooks and lists the others as
# numbers, so numbers where a name is not accepted (dstnat = -100, srcnat = 100, filter = 0).
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", "dstnat - 10"),
    ("filter-output-pre-dnat", "filter", "output", "-110"),
    ("filter-input", "filter", "input", "filter"),
    ("filter-forward", "filter", "forward", "filter"),
    ("filter-output", "filter", "output", "filter"),
    ("nat-prerouting", "nat", "prerouting", "dstnat"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "srcnat"),
)
# Jumps from the base chains (nftablesJumpChains): (from, condition, to), in upstream's order.
JUMPS = (
    ("filter-input", "ct state new", NODEPORT_ENDPOINTS_CHECK_CHAIN),
    ("filter-input", "ct state new", SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-forward", "ct state new", SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-output", "ct state new", SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-prerouting-pre-dnat", "ct state new", FIREWALL_CHECK_CHAIN),
    ("filter-output-pre-dnat", "ct state new", FIREWALL_CHECK_CHAIN),
    ("nat-output", "", SERVICES_CHAIN),
    ("nat-prerouting", "", SERVICES_CHAIN),
    ("nat-postrouting", "", MASQUERADING_CHAIN),
    ("filter-forward", "ct state new", CLUSTER_IPS_CHECK_CHAIN),
    ("filter-output", "ct state new", CLUSTER_IPS_CHECK_CHAIN),
)
FAMILY = {IPV4: ("ipv4_addr", "127.0.0.0/8"), IPV6: ("ipv6_addr", "::1")}
NODEPORT_ADDRESSES = ("primary", "all")


def hash_and_truncate(name):
    """kube-proxy's hashAndTruncate: the first 8 base32 characters of sha256(name), a dash, the name."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode()  # 5 bytes: 8 characters
    name = digest + "-" + name
    if len(name) > CHAIN_NAME_BASE_LENGTH_MAX:
        name = name[:CHAIN_NAME_BASE_LENGTH_MAX - 3] + "..."
    return name


def service_chain_base(sp):
    """servicePortChainNameBase: ``HASH-namespace/name/protocol/portname`` (port name may be empty)."""
    return hash_and_truncate(f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}")


def endpoint_text(endpoint):
    """The endpoint as Go's net.JoinHostPort prints it (IPv6 in brackets)."""
    if ":" in endpoint.address:
        return f"[{endpoint.address}]:{endpoint.port}"
    return f"{endpoint.address}:{endpoint.port}"


def endpoint_chain_base(sp, endpoint):
    """servicePortEndpointChainNameBase: ``HASH-ns/name/proto/portname__ip/port``; IPv6 colons become dots."""
    address = endpoint.address.replace(":", ".")
    return hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}__{address}/{endpoint.port}")


def endpoint_sort_key(endpoint):
    return endpoint.sort_key


def categorize_endpoints(sp):
    """kube-proxy's CategorizeEndpoints as the nftables proxier uses it: (cluster, local, reachable, has_any).

    Cluster endpoints are needed when the internal policy is Cluster or the port takes external
    traffic (short-circuiting needs them even under external policy Local); local ones when either
    policy that applies is Local. ``has_any`` says whether any usable endpoint exists anywhere.
    """
    external_local = sp.external_local and sp.external
    uses_cluster = not sp.internal_local or sp.external
    uses_local = sp.internal_local or external_local
    cluster, local = sp.cluster_endpoints, sp.local_endpoints
    if not uses_local:
        local = []
    has_any = bool(cluster)
    if uses_local:
        has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in sp.endpoints)
    reachable = {}
    for endpoint in (cluster if uses_cluster else []) + local:
        reachable[(endpoint.address, endpoint.port)] = endpoint
    return (sorted(cluster, key=endpoint_sort_key), sorted(local, key=endpoint_sort_key),
            sorted(reachable.values(), key=endpoint_sort_key), has_any, uses_cluster, uses_local)


def detect_local(cluster_cidrs, family):
    """The pod network of one family for the ClusterCIDR local-traffic detector, or None."""
    for text in cluster_cidrs:
        network = parse_network(text)
        if network is None:
            raise ValueError(f"cluster_cidr: {text!r} is not a network in CIDR notation")
        if family_of(network) == family:
            return network
    return None


def split_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


class Table:
    """Accumulates the sets, maps and chains of one family's kube-proxy table in upstream's shape."""

    def __init__(self, family):
        self.ip = NFT[family]
        self.addr_type, self.localhost = FAMILY[family]
        self.sets = {}  # name -> (declaration lines, elements list)
        self.elements = {}  # set/map name -> {key: value or None}
        self.chains = {}  # name -> [rules]
        self.chain_comments = {}

    def chain(self, name):
        return self.chains.setdefault(name, [])

    def rule(self, chain, text):
        self.chain(chain).append(text)

    def element(self, container, key, value=None, comment=None):
        bucket = self.elements.setdefault(container, {})
        if key not in bucket:  # the first Service to claim an IP:proto:port keeps it
            bucket[key] = (value, comment)


class Recording:
    """A Table that also keeps what one service port does to it (``steps``), to do it again on
    another node's table: every chain, rule and element but the hairpin ones, which depend on where
    the port's endpoints run (``replay`` adds those for the node)."""

    def __init__(self, table):
        self.table, self.ip, self.steps = table, table.ip, []

    def chain(self, name):
        self.steps.append((Table.chain, (name,)))
        return self.table.chain(name)

    def rule(self, chain, text):
        self.steps.append((Table.rule, (chain, text)))
        self.table.rule(chain, text)

    def element(self, container, key, value=None, comment=None):
        if container != HAIRPIN_SET:
            self.steps.append((Table.element, (container, key, value, comment)))
        self.table.element(container, key, value, comment)


def replay(table, sp, steps, reachable, options):
    """A recorded port's ``steps`` on ``table``, and the hairpin elements of those of its endpoints
    that are ``reachable`` and on this node."""
    for step, arguments in steps:
        step(table, *arguments)
    if not options.mark_chain:
        for endpoint in sp.endpoints:
            if endpoint.local and (endpoint.address, endpoint.port) in reachable:
                add_hairpin(table, sp, endpoint)


def add_hairpin(table, sp, endpoint):
    """A local endpoint reaching its own Service is masqueraded (since v1.36)."""
    table.element(HAIRPIN_SET, f"{endpoint.address} . {endpoint.address} . {sp.protocol.lower()} . {endpoint.port}")


def declare(lines, name, kind, type_text, comment=None, flags=None, timeout=None, elements=None):
    lines.append(f"\t{kind} {name} {{")
    lines.append(f"\t\ttype {type_text}")
    if flags:
        lines.append(f"\t\tflags {','.join(flags)}")
    if timeout:
        lines.append(f"\t\ttimeout {timeout}s")
    if comment:
        lines.append(f"\t\tcomment {quote(comment)}")
    if elements:
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(elements) + " }")
    lines.append("\t}")


def quote(text):
    if '"' in text:
        raise ValueError(f"{text!r}: nft strings cannot hold a double quote")
    return f'"{text}"'


def element_text(key, value, comment):
    text = key + (f" comment {quote(comment)}" if comment else "")
    return f"{text} : {value}" if value is not None else text


def ip_sort_key(text):
    key = ip_key(text.split(" ", 1)[0])
    return (0, key[1], text) if key is not None else (1, 0, text)


class Options:
    __slots__ = ("cluster_cidr", "fingerprint", "mark", "mark_chain", "masquerade", "masquerade_all", "node_ips",
                 "nodeport_all", "primary_ip", "service_cidrs", "version")


def build_options(family, node_ips, cluster_cidr, masquerade_bit, masquerade_all, nodeport_addresses,
                  service_cidrs, version, node_addresses=None):
    if not isinstance(masquerade_bit, int) or not 0 <= masquerade_bit <= 31:
        raise ValueError(f"masquerade_bit: {masquerade_bit!r} is not a bit number 0-31")
    networks = None
    if isinstance(nodeport_addresses, (list, tuple)):
        networks = [parse_network(str(cidr)) for cidr in nodeport_addresses]
        if None in networks or any(family_of(network) != family for network in networks):
            raise ValueError(f"nodeport_addresses: {list(nodeport_addresses)!r} are not IPv{VERSION[family]} CIDRs")
    elif nodeport_addresses not in NODEPORT_ADDRESSES:
        raise ValueError(f"nodeport_addresses: {nodeport_addresses!r} is not one of {', '.join(NODEPORT_ADDRESSES)}, "
                         "or a list of CIDRs")
    check_node_ips(node_ips)
    if node_addresses is not None:
        check_node_ips(node_addresses, "node_port_addresses")
    options = Options()
    options.version = check_version(version)
    options.mark_chain = options.version < MARK_CHAIN_RELEASE
    options.mark = hex(1 << masquerade_bit)
    options.masquerade = f"jump {MARK_MASQ_CHAIN}" if options.mark_chain else f"mark set mark or {options.mark}"
    options.masquerade_all = bool(masquerade_all)
    options.cluster_cidr = detect_local(split_list(cluster_cidr), family)
    family_ips = [ip for ip in map(parse_ip, node_ips) if family_of(ip) == family]
    options.primary_ip = family_ips[0] if family_ips else None
    # "primary" is the node's first IP of the family; a family without one listens everywhere,
    # as kube-proxy's zero CIDR does. kube-proxy lists the node's interfaces for the addresses in
    # that CIDR: a node IP no interface holds (IPv6 switched off, an address the cloud maps to the
    # node) is no element - when the node's addresses are known (``node_addresses``).
    on_node = node_addresses is None or options.primary_ip in {parse_ip(address) for address in node_addresses}
    options.node_ips = [] if options.primary_ip is None or options.primary_ip.is_loopback or not on_node \
        else [str(options.primary_ip)]
    options.nodeport_all = nodeport_addresses == "all" or options.primary_ip is None
    if networks is not None:
        # nodePortAddresses CIDRs of this family (none of them a zero one): the node's addresses in
        # them, loopback ones left out, as kube-proxy fills the set from the node's interfaces
        held = addresses_in(networks, node_ips if node_addresses is None else node_addresses)
        options.node_ips = [address for address in held if not parse_ip(address).is_loopback]
        options.nodeport_all = False
    cidrs = []
    for text in split_list(service_cidrs):
        network = parse_network(text)
        if network is None:
            raise ValueError(f"service_cidrs: {text!r} is not a network in CIDR notation")
        if family_of(network) == family:
            cidrs.append(str(network))
    options.service_cidrs = cidrs
    # what a port the same on every node renders from: every option but the node's addresses
    options.fingerprint = (family, options.version, options.mark, options.masquerade_all, str(options.cluster_cidr))
    return options


def setup_rules(table, options):
    """setupNFTables: base chains' jumps, masquerading, the check chains and the dispatch rules."""
    ip = table.ip
    for source, condition, target in JUMPS:
        table.rule(source, f"{condition} jump {target}".strip())
    if options.mark_chain:
        table.rule(MARK_MASQ_CHAIN, f"mark set mark or {options.mark}")
        table.rule(MASQUERADING_CHAIN, f"mark and {options.mark} == 0 return")
        table.rule(MASQUERADING_CHAIN, f"mark set mark xor {options.mark}")
        table.rule(MASQUERADING_CHAIN, "masquerade fully-random")
    else:
        table.rule(MASQUERADING_CHAIN, f"mark and {options.mark} != 0 mark set mark xor {options.mark} "
                                       "masquerade fully-random")
        table.rule(MASQUERADING_CHAIN, f"ct status dnat {ip} saddr . {ip} daddr . meta l4proto . th dport "
                                       f"@{HAIRPIN_SET} masquerade fully-random")
    table.rule(CLUSTER_IPS_CHECK_CHAIN, f'{ip} daddr @{CLUSTER_IPS_SET} reject comment '
                                        f'"Reject traffic to invalid ports of ClusterIPs"')
    if options.service_cidrs:
        table.rule(CLUSTER_IPS_CHECK_CHAIN, f'{ip} daddr {{ {", ".join(options.service_cidrs)} }} drop comment '
                                            f'"Drop traffic to unallocated ClusterIPs"')
    table.rule(REJECT_CHAIN, "reject")
    table.chain_comments[REJECT_CHAIN] = "helper for @no-endpoint-services / @no-endpoint-nodeports"
    table.rule(SERVICE_ENDPOINTS_CHECK_CHAIN,
               f"{ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES_MAP}")
    table.rule(FIREWALL_CHECK_CHAIN, f"{ip} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS_MAP}")
    if options.mark_chain:
        pass  # each Service's internal chain marks its own off-cluster traffic
    elif options.masquerade_all:
        table.rule(SERVICES_CHAIN, f'{ip} daddr @{CLUSTER_IPS_SET} {options.masquerade} '
                                   f'comment "masquerade all clusterIP traffic"')
    elif options.cluster_cidr is not None:
        # Off-cluster traffic to a ClusterIP (a static route to the service range) may leave the node.
        table.rule(SERVICES_CHAIN, f'{ip} daddr @{CLUSTER_IPS_SET} {ip} saddr != {options.cluster_cidr} '
                                   f'{options.masquerade} comment "masquerade clusterIP traffic from outside cluster"')
    table.rule(SERVICES_CHAIN, f"{ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS_MAP}")
    if options.nodeport_all:
        table.rule(NODEPORT_ENDPOINTS_CHECK_CHAIN,
                   f"{ip} daddr != {table.localhost} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}")
        table.rule(SERVICES_CHAIN, f"fib daddr type local {ip} daddr != {table.localhost} "
                                   f"meta l4proto . th dport vmap @{SERVICE_NODEPORTS_MAP}")
    else:
        table.rule(NODEPORT_ENDPOINTS_CHECK_CHAIN,
                   f"{ip} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}")
        table.rule(SERVICES_CHAIN,
                   f"{ip} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport vmap @{SERVICE_NODEPORTS_MAP}")
        for node_ip in options.node_ips:
            table.element(NODEPORT_IPS_SET, node_ip)


def write_service_to_endpoint_dnats(table, sp, chain, endpoints, version):
    """writeServiceToEndpointDNATs: a ``numgen`` map of the endpoints; since v1.37 one endpoint is a
    plain DNAT."""
    protocol = sp.protocol.lower()
    if len(endpoints) == 1 and version >= SINGLE_DNAT_RELEASE:
        table.rule(chain, f"meta l4proto {protocol} dnat to {endpoint_text(endpoints[0])}")
        return
    targets = ", ".join(f"{index} : {endpoint.address} . {endpoint.port}" for index, endpoint in enumerate(endpoints))
    table.rule(chain, f"meta l4proto {protocol} dnat {table.ip} addr . port to "
                      f"numgen random mod {len(endpoints)} map {{ {targets} }}")


def write_service_to_endpoint_jumps(table, sp, chain, endpoints):
    """writeServiceToEndpointJumps: with session affinity the affinity lookups, then ``numgen
    random mod N vmap`` to the endpoint chains."""
    for endpoint in endpoints if sp.affinity else ():
        base = endpoint_chain_base(sp, endpoint)
        table.rule(chain, f"{table.ip} saddr @affinity-{base} goto endpoint-{base}")
    targets = ", ".join(f"{index} : goto endpoint-{endpoint_chain_base(sp, endpoint)}"
                        for index, endpoint in enumerate(endpoints))
    table.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {targets} }}")


def sync_service_port(table, sp, options, affinity):
    """syncProxyRules for one ServicePort; the (address, port) of the endpoints its chains reach."""
    ip, protocol, port = table.ip, sp.protocol.lower(), sp.port
    name = sp.service_port_name
    base = service_chain_base(sp)
    cluster_chain, local_chain = f"service-{base}", f"local-{base}"
    external_chain, firewall_chain = f"external-{base}", f"firewall-{base}"
    cluster, local, reachable, has_any, uses_cluster, uses_local = categorize_endpoints(sp)
    external_local = sp.external_local and sp.external

    endpoint_chains = sp.affinity or options.mark_chain
    for endpoint in reachable:
        if endpoint_chains:  # since v1.36 only with session affinity
            table.chain(f"endpoint-{endpoint_chain_base(sp, endpoint)}")
        if endpoint.local and not options.mark_chain:
            add_hairpin(table, sp, endpoint)
    uses_cluster_chain = bool(cluster) and uses_cluster
    uses_local_chain = bool(local) and uses_local
    if uses_cluster_chain:
        table.chain(cluster_chain)
    if uses_local_chain:
        table.chain(local_chain)

    internal_chain, has_internal = cluster_chain, has_any
    if sp.internal_local:
        internal_chain = local_chain
        has_internal = has_any and bool(local)
    external_policy_chain, has_external = cluster_chain, has_any
    if external_local:
        external_policy_chain = local_chain
        has_external = has_any and bool(local)
    uses_external_chain = has_any and sp.external
    if uses_external_chain:
        table.chain(external_chain)

    if has_internal and options.mark_chain:  # before v1.36: off-cluster traffic to the ClusterIP
        if options.masquerade_all:
            table.rule(internal_chain, f"{ip} daddr {sp.cluster_ip} {options.masquerade}")
        elif options.cluster_cidr is not None:
            table.rule(internal_chain, f"{ip} daddr {sp.cluster_ip} {ip} saddr != {options.cluster_cidr} "
                                       f"{options.masquerade}")

    if not has_any:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = None if has_internal else "drop"
        external_verdict = None if has_external else "drop"

    def key(address):
        return f"{address} . {protocol} . {port}"

    table.element(CLUSTER_IPS_SET, sp.cluster_ip)
    if has_internal:
        table.element(SERVICE_IPS_MAP, key(sp.cluster_ip), f"goto {internal_chain}")
    else:
        table.element(NO_ENDPOINT_SERVICES_MAP, key(sp.cluster_ip), internal_verdict, comment=name)

    for external_ip in sp.external_ips:
        if has_any:
            table.element(SERVICE_IPS_MAP, key(external_ip), f"goto {external_chain}")
        if not has_external:
            table.element(NO_ENDPOINT_SERVICES_MAP, key(external_ip), external_verdict, comment=name)

    uses_firewall = bool(sp.lb_ips) and bool(sp.source_ranges)
    if uses_firewall:
        table.chain(firewall_chain)
    for lb_ip in sp.lb_ips:
        if has_any:
            table.element(SERVICE_IPS_MAP, key(lb_ip), f"goto {external_chain}")
        if uses_firewall:
            table.element(FIREWALL_IPS_MAP, key(lb_ip), f"goto {firewall_chain}")
    if not has_external:
        for lb_ip in sp.lb_ips:
            table.element(NO_ENDPOINT_SERVICES_MAP, key(lb_ip), external_verdict, comment=name)

    if sp.node_port:
        node_key = f"{protocol} . {sp.node_port}"
        if has_any:
            table.element(SERVICE_NODEPORTS_MAP, node_key, f"goto {external_chain}")
        if not has_external:
            table.element(NO_ENDPOINT_NODEPORTS_MAP, node_key, external_verdict, comment=name)

    if uses_external_chain:
        if not external_local:
            # cluster-wide endpoints may be on other nodes
            table.rule(external_chain, options.masquerade if options.mark_chain
                       else f'{options.masquerade} comment "masquerade"')
        else:
            if options.cluster_cidr is not None:
                table.rule(external_chain, f'{ip} saddr {options.cluster_cidr} goto {cluster_chain} '
                                           f'comment "short-circuit pod traffic"')
            table.rule(external_chain,
                       f'fib saddr type local {options.masquerade} comment "masquerade local traffic"')
            table.rule(external_chain,
                       f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
        if has_external:
            table.rule(external_chain, f"goto {external_policy_chain}")

    if uses_firewall:
        sources = [str(network) for network in sp.source_ranges]
        if options.primary_ip is not None and any(options.primary_ip in network for network in sp.source_ranges):
            sources.extend(sp.lb_ips)  # a node reaching its own LB VIP loops back with the VIP as source
        table.rule(firewall_chain, f"{ip} saddr != {{ {', '.join(sources)} }} drop")

    if not endpoint_chains:
        if uses_cluster_chain:
            write_service_to_endpoint_dnats(table, sp, cluster_chain, cluster, options.version)
        if uses_local_chain:
            write_service_to_endpoint_dnats(table, sp, local_chain, local, options.version)
        return {(endpoint.address, endpoint.port) for endpoint in reachable}
    for endpoint in reachable if sp.affinity else ():
        affinity[f"affinity-{endpoint_chain_base(sp, endpoint)}"] = sp.affinity
    if uses_cluster_chain:
        write_service_to_endpoint_jumps(table, sp, cluster_chain, cluster)
    if uses_local_chain:
        write_service_to_endpoint_jumps(table, sp, local_chain, local)
    for endpoint in reachable:
        chain_base = endpoint_chain_base(sp, endpoint)
        chain = f"endpoint-{chain_base}"
        if options.mark_chain:  # before v1.36: an endpoint reaching its own Service is masqueraded
            table.rule(chain, f"{ip} saddr {endpoint.address} {options.masquerade}")
        if sp.affinity:
            table.rule(chain, f"update @affinity-{chain_base} {{ {ip} saddr }}")
        table.rule(chain, f"meta l4proto {protocol} dnat to {endpoint_text(endpoint)}")
    return {(endpoint.address, endpoint.port) for endpoint in reachable}


SET_DECLARATIONS = (
    # (name, kind, type with {addr} for the family's address type, comment)
    (HAIRPIN_SET, "set", "{addr} . {addr} . inet_proto . inet_service", "service hairpin connections"),
    (CLUSTER_IPS_SET, "set", "{addr}", "Active ClusterIPs"),
    (NODEPORT_IPS_SET, "set", "{addr}", "IPs that accept NodePort traffic"),
    (NO_ENDPOINT_SERVICES_MAP, "map", "{addr} . inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to services with no endpoints"),
    (NO_ENDPOINT_NODEPORTS_MAP, "map", "inet_proto . inet_service : verdict",
     "vmap to drop or reject packets to service nodeports with no endpoints"),
    (FIREWALL_IPS_MAP, "map", "{addr} . inet_proto . inet_service : verdict",
     "destinations that are subject to LoadBalancerSourceRanges"),
    (SERVICE_IPS_MAP, "map", "{addr} . inet_proto . inet_service : verdict",
     "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    (SERVICE_NODEPORTS_MAP, "map", "inet_proto . inet_service : verdict", "NodePort traffic"),
)


def render(table, options, affinity, sort_keys=None):
    """The table's body. ``sort_keys``: elements' sort keys already worked out (by element key), a
    dict kept between the nodes of one cluster, whose elements are mostly the same."""
    element_key = memoized(ip_sort_key, {} if sort_keys is None else sort_keys)

    def sort_key(item):
        return element_key(item[0])

    lines = [f"\tcomment {quote('rules for kube-proxy')}"]
    for name, kind, type_template, comment in SET_DECLARATIONS:
        if name == NODEPORT_IPS_SET and options.nodeport_all:
            continue  # upstream adds and deletes it: the set does not exist when NodePorts listen everywhere
        if name == HAIRPIN_SET and options.mark_chain:
            continue  # since v1.36
        type_text = type_template.format(addr=table.addr_type)
        bucket = table.elements.get(name, {})
        elements = [element_text(key, value, note) for key, (value, note) in sorted(bucket.items(), key=sort_key)]
        declare(lines, name, kind, type_text, comment=comment, elements=elements)
    for name in sorted(affinity):
        declare(lines, name, "set", table.addr_type, flags=("dynamic", "timeout"), timeout=affinity[name])

    base_names = [chain[0] for chain in BASE_CHAINS]
    for name, chain_type, hook, priority in BASE_CHAINS:
        lines.append(f"\tchain {name} {{")
        lines.append(f"\t\ttype {chain_type} hook {hook} priority {priority}; policy accept;")
        lines.extend(f"\t\t{rule}" for rule in table.chains.get(name, []))
        lines.append("\t}")
    for name in sorted(n for n in table.chains if n not in base_names):
        lines.append(f"\tchain {name} {{")
        if name in table.chain_comments:
            lines.append(f"\t\tcomment {quote(table.chain_comments[name])}")
        lines.extend(f"\t\t{rule}" for rule in table.chains[name])
        lines.append("\t}")
    return "\n".join(lines) + "\n"


def nftables_table(service_ports, family, node_ips, **options):
    """The ``kube-proxy`` table of one family: {"family": "ip"|"ip6", "name": "kube-proxy", "content": body}.

    ``service_ports`` come from _kube_proxy_state.Cluster.service_ports for the same ``family`` (each
    one's ClusterIP is checked to be of it). ``node_ips`` are the node's addresses (NodePorts listen on
    those of this family when ``nodeport_addresses`` is "primary", kube-proxy's default in nftables
    mode, if the node holds it: ``node_addresses``, its interfaces' addresses, when known; "all"
    listens on every local address; a list of CIDRs of the family, on the node's addresses in them).
    ``cluster_cidr`` (str, comma-separated str or list)
    enables the ClusterCIDR local-traffic detector; ``service_cidrs`` adds the drop rule for
    unallocated ClusterIPs; ``masquerade_bit``, ``masquerade_all`` and ``version`` as kube-proxy's.
    Raises ValueError on bad input.
    """
    check_family(family)
    service_ports = list(service_ports)
    for sp in service_ports:
        if parse_ip(sp.cluster_ip) is None or family_of(ipaddress.ip_address(sp.cluster_ip)) != family:
            raise ValueError(f"{sp.service_port_name}: ClusterIP {sp.cluster_ip} is not an "
                             f"IPv{VERSION[family]} address")
    return family_table(service_ports, family, node_ips, **options)


def check_family(family):
    if family not in FAMILY:
        raise ValueError(f"family: {family!r} is not {' or '.join(FAMILY)}")


def family_table(service_ports, family, node_ips, cluster_cidr=None, masquerade_bit=14, masquerade_all=False,
                 nodeport_addresses="primary", service_cidrs=None, version=RENDERED_VERSIONS[-1], memo=None,
                 node_addresses=None):
    """nftables_table for ports known to be of ``family`` (a Cluster's, which picks them by family).

    ``memo``: a dict kept between the nodes of one cluster (``Cluster.memo``) - what a port the same on
    every node does to the table is recorded on the first node and done again on the next ones."""
    check_family(family)
    options = build_options(family, list(node_ips), cluster_cidr, masquerade_bit, masquerade_all,
                            nodeport_addresses, service_cidrs, version, node_addresses)
    table = Table(family)
    for name in (SERVICES_CHAIN, CLUSTER_IPS_CHECK_CHAIN, MASQUERADING_CHAIN, REJECT_CHAIN,
                 SERVICE_ENDPOINTS_CHECK_CHAIN, NODEPORT_ENDPOINTS_CHECK_CHAIN, FIREWALL_CHECK_CHAIN):
        table.chain(name)
    if options.mark_chain:
        table.chain(MARK_MASQ_CHAIN)
    setup_rules(table, options)
    affinity = {}
    for sp in service_ports:
        if memo is None or not same_on_every_node(sp):
            sync_service_port(table, sp, options, affinity)
            continue
        key = (options.fingerprint, sp.service_port_name, sp.protocol)
        recorded = memo.get(key)
        if recorded is None:
            recording, own_affinity = Recording(table), {}
            reachable = sync_service_port(recording, sp, options, own_affinity)
            recorded = memo[key] = (recording.steps, reachable, own_affinity)
        else:
            replay(table, sp, recorded[0], recorded[1], options)
        affinity.update(recorded[2])
    sort_keys = None if memo is None else memo.setdefault("sort_keys", {})
    return {"family": table.ip, "name": TABLE_NAME, "content": render(table, options, affinity, sort_keys)}


def nftables_state(services, endpoint_slices, node_name, node_ips, families=(), node_port_cidrs=None, **options):
    """The kube-proxy tables of one node: {"ipv4": table, "ipv6": table} for the families it has
    (as _kube_proxy_state.ip_families picks from ``families``). ``options`` are nftables_table's keyword options.
    ``node_port_cidrs``: kube-proxy's nodePortAddresses, keywords expanded
    (``_kube_proxy_catalogue.node_port_cidrs``), which set each family's ``nodeport_addresses``: "all"
    for a family without a CIDR of its own or with a zero one, else its CIDRs."""
    check_node_ips(node_ips)
    cluster = as_cluster(services, endpoint_slices)
    result = {}
    for family in ip_families(cluster, node_ips, families):
        if node_port_cidrs is not None:
            networks = node_port_networks(node_port_cidrs, family)
            options["nodeport_addresses"] = "all" if networks is None else [str(network) for network in networks]
        result[family] = family_table(cluster.service_ports(node_name, family), family, node_ips,
                                      memo=cluster.memo.setdefault("nftables", {}), **options)
    return result
