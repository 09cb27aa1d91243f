# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What kube-proxy in IPVS mode programs on one node, computed from Services and EndpointSlices.

Pure functions (no Ansible, no API). The facts follow kube-proxy's pkg/proxy/ipvs/proxier.go
(syncProxyRules, syncEndpoint), pkg/proxy/topology.go (CategorizeEndpoints) and
pkg/proxy/endpointslicecache.go; the output uses the input formats of this collection's
dummy_interface, ipvs_sync and ipset modules.

Topology: an endpoint's zone and node hints (the EndpointSlice controller's, for a Service's
trafficDistribution) pick a node's cluster-wide endpoints as kube-proxy's topologyModeFromHints does,
from the node's name and zone label (``Cluster``'s ``zones``). The node's addresses
NodePorts listen on come from the caller (``node_port_addresses``: kube-proxy lists the node's
interfaces); IPVS mode's iptables rules are ``_kube_proxy_ipvs_iptables``'s, from the sets here.
"""

from __future__ import annotations

import ipaddress
import socket

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._dataplane import port_label
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import INET, IPV4, IPV6, KUBERNETES, family_of
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._shared_run import SharedRun, SharedTail
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPSET_TYPES,
    addresses_in,
    ipset_name,
    ipset_spec,
    node_port_networks,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    control_character,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
ZONE_LABEL = "topology.kubernetes.io/zone"  # the node label zone hints are matched against
NO_HINTS = frozenset()
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; sessionAffinityConfig.clientIP.timeoutSeconds default


def parse_ip(text):
    """A plain IP address, or None: an IPv6 scope ("fe80::1%eth0", which Python's ipaddress takes
    with any text after the '%') and control characters are never an address here."""
    text = str(text)
    try:  # the common case, an IPv4 address as printed: from its 4 bytes, without parsing it in Python
        packed = socket.inet_pton(socket.AF_INET, text)
        if socket.inet_ntop(socket.AF_INET, packed) == text:
            return ipaddress.IPv4Address(packed)
    except (OSError, ValueError):  # ValueError: a NUL character
        pass
    if "%" in text or control_character(text) is not None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def ip_key(text):
    """``parse_ip(text)`` as (version, number) for ordering, None when it is no address - an IPv4
    address as printed read from its bytes, without building an address object."""
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
        if socket.inet_ntop(socket.AF_INET, packed) == text:
            return (4, int.from_bytes(packed, "big"))
    except (OSError, ValueError, TypeError):
        pass
    ip = parse_ip(text)
    return None if ip is None else (ip.version, int(ip))


class Endpoint:
    """One endpoint of a service port as a node sees it; ``sort_key`` orders endpoints by address, then port.
    ``zones`` and ``nodes``: its topology hints (the zones and node names it is hinted for; empty without)."""

    __slots__ = ("address", "local", "nodes", "port", "ready", "serving", "sort_key", "terminating", "zones")

    def __init__(self, address, port, ready, serving, terminating, local, number=None, zones=NO_HINTS, nodes=NO_HINTS):
        self.address, self.port = address, port
        self.ready, self.serving, self.terminating, self.local = ready, serving, terminating, local
        self.zones, self.nodes = zones, nodes
        self.sort_key = (int(parse_ip(address)) if number is None else number, port)


def hint_names(hints, field):
    """The names in an endpoint's ``hints.<field>`` (forZones or forNodes), as kube-proxy reads them."""
    entries = (hints or {}).get(field) or []
    return frozenset(entry.get("name") for entry in entries if isinstance(entry.get("name"), str)) or NO_HINTS


def endpoint_rows(slices, family, node_hints=True):
    """(namespace, service, port name, protocol) -> [(address, port, ready, serving, terminating, node name,
    address as a number, zone hints, node hints)]
    from the slices of one family: what every node's endpoints are made of (``Cluster``).

    As kube-proxy's endpoint slice cache: only the first address of an endpoint counts; a
    missing ready or serving condition means true, a missing terminating one false; every
    endpoint is kept whatever its conditions (categorize() picks). Without ``node_hints`` (the
    PreferSameTrafficDistribution gate off) endpoints' node hints are left out, as kube-proxy does.
    """
    address_type = KUBERNETES[family]
    result = {}
    for endpoint_slice in slices:
        metadata = endpoint_slice.get("metadata") or {}
        service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service or endpoint_slice.get("addressType") != address_type:
            continue
        for port in endpoint_slice.get("ports") or []:
            if port.get("port") is None:
                continue
            key = (metadata.get("namespace") or "", service, port.get("name") or "", port.get("protocol") or "TCP")
            bucket = result.setdefault(key, {})
            for endpoint in endpoint_slice.get("endpoints") or []:
                addresses = endpoint.get("addresses") or []
                address = parse_ip(addresses[0]) if addresses else None
                if address is None or family_of(address) != family:
                    continue
                conditions = endpoint.get("conditions") or {}
                terminating = conditions.get("terminating") is True
                key = f"{address}:{port['port']}"
                # The same IP in two slices (a reused pod IP): the endpoint that is not terminating wins.
                if key not in bucket or not terminating:
                    bucket[key] = (str(address), port["port"], conditions.get("ready") is not False,
                                   conditions.get("serving") is not False, terminating, endpoint.get("nodeName"),
                                   int(address), hint_names(endpoint.get("hints"), "forZones"),
                                   hint_names(endpoint.get("hints"), "forNodes") if node_hints else NO_HINTS)
    return {key: list(bucket.values()) for key, bucket in result.items()}


def categorize(endpoints, uses_cluster, uses_local, node_name=None, zone=None):
    """kube-proxy's CategorizeEndpoints: (cluster, local) endpoint lists for the node ``node_name``
    in ``zone`` (its topology.kubernetes.io/zone label; None or "" without one).

    Cluster endpoints are the ready ones the node's topology mode admits (``topology_mode``) or,
    when none is ready anywhere, the serving and terminating ones. Local endpoints are the ready
    ones on this node or, when none is, this node's serving and terminating ones - whatever the hints.
    """
    cluster, local = [], []
    if uses_cluster:
        mode = topology_mode(endpoints, node_name, zone)
        if mode is None:
            cluster = [e for e in endpoints if e.ready]
        elif mode == "node":
            cluster = [e for e in endpoints if e.ready and node_name in e.nodes]
        else:
            cluster = [e for e in endpoints if e.ready and zone in e.zones]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
    if uses_local:
        local = [e for e in endpoints if e.local and e.ready]
        if not local:
            local = [e for e in endpoints if e.local and e.serving and e.terminating]
    return cluster, local


def topology_mode(endpoints, node_name, zone):
    """kube-proxy's topologyModeFromHints: "node" when every ready endpoint has node hints and one is
    hinted for ``node_name``; else "zone" when every ready endpoint has zone hints and one is hinted for
    ``zone``; else None (every ready endpoint serves, as without hints)."""
    ready = [e for e in endpoints if e.ready]
    if not ready:
        return None
    if node_name and all(e.nodes for e in ready) and any(node_name in e.nodes for e in ready):
        return "node"
    if zone and all(e.zones for e in ready) and any(zone in e.zones for e in ready):
        return "zone"
    return None


def hinted(endpoints):
    """Whether any endpoint carries topology hints: the port's endpoints then depend on the node."""
    return any(e.zones or e.nodes for e in endpoints)


def endpoint_order(endpoint):
    return endpoint.sort_key


class NodeState:
    """Accumulates the dummy addresses, IPVS services and ipset members of one family.

    ``node_ips``: the addresses NodePorts listen on; ``primary_ip``: kube-proxy's node IP of the
    family (whether loadBalancerSourceRanges admit the node itself), or None. ``shared``: the
    virtual servers the same on every node that earlier nodes built (by key, kept in the cluster's
    memo), to take rather than build again; None builds every one. ``shared_keys`` lists those
    this node has, in the order claimed."""

    def __init__(self, family, node_ips, scheduler, primary_ip=None, shared=None):
        self.family = family
        self.node_ips = node_ips
        self.primary_ip = primary_ip
        self.primary_address = parse_ip(primary_ip) if primary_ip else None
        self.scheduler = scheduler
        self.bound = set()
        self.services = {}
        self.sets = {name: set() for name in IPSET_TYPES}
        self.shared = shared
        self.shared_keys = []

    def add(self, set_name, member):
        self.sets[set_name].add(member)

    def virtual_server(self, address, protocol, port, affinity_timeout, endpoints, bind, everywhere=False):
        """``everywhere``: the virtual server is the same on every node (its endpoints do not depend on
        the node's)."""
        key = (protocol, address, port)
        if key in self.services:  # the first Service to claim a VIP:port wins, as in the kernel
            return
        if everywhere and self.shared is not None:
            service = self.shared.get(key)
            if service is None:
                service = self.shared[key] = self._build(address, protocol, port, affinity_timeout, endpoints)
            self.shared_keys.append(key)
        else:
            service = self._build(address, protocol, port, affinity_timeout, endpoints)
        self.services[key] = service
        if bind:
            self.bound.add(address)

    def _build(self, address, protocol, port, affinity_timeout, endpoints):
        service = {"protocol": protocol, "address": address, "port": port, "family": INET[self.family],
                   "scheduler": self.scheduler}
        if self.scheduler == "mh":
            service["scheduler_flags"] = ["mh-port"]  # kube-proxy sets the source-port hash flag for mh
        if affinity_timeout:
            service["persistence_timeout"] = affinity_timeout
        service["real_servers"] = [{"address": e.address, "port": e.port, "weight": 1, "forwarding": "nat"}
                                   for e in sorted(endpoints, key=endpoint_order)]
        return service


def entry(ip, protocol, port, third=None):
    text = f"{ip},{protocol}:{port}"
    return f"{text},{third}" if third is not None else text


def parse_network(text):
    text = str(text).strip()
    if "%" in text or control_character(text) is not None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None  # the API server validates source ranges; a bad one is skipped, as kube-proxy does


def net_text(network):
    """A source range as ipset prints it: a host network without its prefix length."""
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def choose(only_local, cluster, local):
    """The endpoints of one virtual server. Local policy with no local endpoint still programs the
    cluster-wide ones (kubernetes#97081); kube-proxy's filter rules drop external traffic instead."""
    return (local or cluster) if only_local else cluster


def externally_accessible(spec):
    service_type = spec.get("type") or "ClusterIP"
    if service_type in ("NodePort", "LoadBalancer"):
        return True
    return service_type == "ClusterIP" and bool(spec.get("externalIPs"))


class ServicePort:
    """One port of one Service as every kube-proxy mode sees it on one node and IP family.

    ``endpoints`` are all the port's endpoints of the family; ``internal_endpoints`` serve the
    ClusterIP and ``external_endpoints`` the NodePorts, external and load-balancer IPs, after
    kube-proxy's categorisation and traffic policies. ``cluster_endpoints`` and ``local_endpoints``
    are CategorizeEndpoints' lists themselves (empty where the policies need none). ``hinted``: an
    endpoint has topology hints, so which of them serve depends on the node.
    """

    __slots__ = ("accessible", "affinity", "cluster_endpoints", "cluster_ip", "endpoints", "external_endpoints",
                 "external_ips", "external_local", "health_check_node_port", "hinted", "internal_endpoints",
                 "internal_local", "lb_ips", "local_endpoints", "name", "namespace", "node_port", "port", "port_name",
                 "protocol", "source_ranges")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    @property
    def service_port_name(self):
        """kube-proxy's ServicePortName.String(): ``namespace/name`` plus ``:port`` when the port is named."""
        text = f"{self.namespace}/{self.name}"
        return f"{text}:{self.port_name}" if self.port_name else text

    @property
    def external(self):
        """Whether the port is reachable from outside the cluster network (NodePort, external or LB IP) -
        kube-proxy's ExternallyAccessible, which counts external IPs it does not program (``accessible``)."""
        return self.accessible


class ServiceShape:
    """What one Service is for one IP family, before any endpoint: parsed once, whatever the node."""

    __slots__ = ("affinity", "cluster_ip", "external_ips", "external_ips_unprogrammed", "external_local",
                 "health_check_node_port",
                 "internal_local", "lb_ips", "name", "namespace", "ports", "source_ranges")

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields[name])


def service_shape(service, family, external_ips=True):
    """The ServiceShape of one Service for one family; None for ExternalName, headless, another
    proxy's Services or a Service without a ClusterIP of the family. Without ``external_ips`` (the
    AllowServiceExternalIPs gate off) its externalIPs are not programmed, as kube-proxy does; they
    still make its ports externally accessible (``external_ips_unprogrammed``)."""
    metadata, spec = service.get("metadata") or {}, service.get("spec") or {}
    if (spec.get("type") == "ExternalName" or SERVICE_PROXY_NAME_LABEL in (metadata.get("labels") or {})):
        return None
    cluster_ips = [parse_ip(ip) for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")])]
    cluster_ip = next((ip for ip in cluster_ips if ip is not None and family_of(ip) == family), None)
    if cluster_ip is None:  # headless, or no ClusterIP of this family
        return None
    listed = [ip for ip in map(parse_ip, spec.get("externalIPs") or []) if ip and family_of(ip) == family]
    unprogrammed = bool(listed) and not external_ips
    external_ips = [] if unprogrammed else listed
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    # ipMode Proxy: the load balancer proxies, the node must not capture the VIP.
    lb_ips = [parse_ip(i.get("ip")) for i in ingress if i.get("ip") and (i.get("ipMode") or "VIP") == "VIP"]
    lb_ips = [ip for ip in lb_ips if ip and family_of(ip) == family]
    source_ranges = [r for r in map(parse_network, spec.get("loadBalancerSourceRanges") or [])
                     if r is not None and family_of(r) == family]
    if any(r.prefixlen == 0 for r in source_ranges):
        source_ranges = []  # as kube-proxy: a zero-length prefix allows every source, as no ranges do
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        affinity = (((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
                    or DEFAULT_AFFINITY_TIMEOUT)
    external_local = externally_accessible(spec) and spec.get("externalTrafficPolicy") == "Local"
    health_check = spec.get("healthCheckNodePort") if external_local and spec.get("type") == "LoadBalancer" else 0
    return ServiceShape(
        namespace=metadata.get("namespace") or "", name=metadata.get("name") or "", cluster_ip=str(cluster_ip),
        external_ips=[str(ip) for ip in external_ips], external_ips_unprogrammed=unprogrammed,
        lb_ips=[str(ip) for ip in lb_ips],
        source_ranges=source_ranges, affinity=affinity, external_local=external_local,
        internal_local=spec.get("internalTrafficPolicy") == "Local", health_check_node_port=health_check or 0,
        ports=[(port.get("name") or "", port.get("protocol") or "TCP", port["port"], port.get("nodePort") or 0)
               for port in spec.get("ports") or []])


def same_on_every_node(sp):
    """Whether what iptables or nftables mode writes for a service port is the same on every node
    (with the same options; nftables' hairpin elements aside): without a Local traffic policy nothing
    depends on where its endpoints run, without topology hints nothing on the node's name or zone, and
    without source ranges nothing names the node's IP."""
    return not (sp.internal_local or sp.external_local or sp.source_ranges or sp.hinted)


def shape_ports(shape, endpoint_map, node_name=None, zone=None):
    """The ServicePorts of one ServiceShape on one node (``node_name`` in ``zone``, for topology hints),
    ``endpoint_map`` being that node's endpoints."""
    result = []
    for port_name, protocol, port, node_port in shape.ports:
        endpoints = endpoint_map.get((shape.namespace, shape.name, port_name, protocol), [])
        port_accessible = bool(node_port or shape.lb_ips or shape.external_ips or shape.external_ips_unprogrammed)
        cluster, local = categorize(endpoints, not shape.internal_local or port_accessible,
                                    shape.internal_local or (shape.external_local and port_accessible),
                                    node_name, zone)
        result.append(ServicePort(
            namespace=shape.namespace, name=shape.name, port_name=port_name, protocol=protocol,
            cluster_ip=shape.cluster_ip, port=port, node_port=node_port, external_ips=shape.external_ips,
            accessible=port_accessible,
            lb_ips=shape.lb_ips, source_ranges=shape.source_ranges, affinity=shape.affinity,
            internal_local=shape.internal_local, external_local=shape.external_local,
            health_check_node_port=shape.health_check_node_port, endpoints=endpoints, hinted=hinted(endpoints),
            cluster_endpoints=cluster, local_endpoints=local,
            internal_endpoints=choose(shape.internal_local, cluster, local),
            external_endpoints=choose(shape.external_local, cluster, local)))
    return result


# --- what the API returned, checked before it becomes rules -----------------------------------------
# The API server validates these fields; this collection checks them again, because they end up in
# rules, ipset members and nft content, and a server (or a proxy in front of it) may answer anything.
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_AFFINITY_TIMEOUT = 86400  # sessionAffinityConfig.clientIP.timeoutSeconds: 1-86400


def _port_number(value, low=1):
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= 65535


def _object_name(obj, kind):
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    return f"{kind} {metadata.get('namespace')!r}/{metadata.get('name')!r}"[:200]


def _check_port_fields(port, where, problems):
    name = port.get("name") or ""
    if name and not DNS1123_LABEL.matches(name):
        problems.append(f"{where}: port name {name!r} is not a DNS-1123 label")
    protocol = port.get("protocol") or "TCP"
    if protocol not in PROTOCOLS if isinstance(protocol, str) else True:
        problems.append(f"{where}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")


def _check_ips(values, where, problems, allowed=()):
    for value in values:
        if value not in allowed and parse_ip(value) is None:
            problems.append(f"{where}: {value!r} is not an IP address")


def _shape_problems(obj, where, shapes):
    """Fields (paths of keys) whose value, when set, is not of the type the rest of the code reads."""
    problems = []
    for path, kind in shapes:
        value = obj
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, kind):
            problems.append(f"{where}: {'.'.join(path)} is not a {'list' if kind is list else 'mapping'}")
        elif isinstance(value, list) and path[-1] in ("ports", "ingress", "endpoints") and not all(
                isinstance(item, dict) for item in value):
            problems.append(f"{where}: {'.'.join(path)} is not a list of objects")
    return problems


SERVICE_SHAPES = ((("metadata", "labels"), dict), (("spec",), dict), (("spec", "ports"), list),
                  (("spec", "clusterIPs"), list), (("spec", "externalIPs"), list),
                  (("spec", "loadBalancerSourceRanges"), list), (("spec", "sessionAffinityConfig"), dict),
                  (("spec", "sessionAffinityConfig", "clientIP"), dict), (("status",), dict),
                  (("status", "loadBalancer"), dict), (("status", "loadBalancer", "ingress"), list))
SLICE_SHAPES = ((("metadata", "labels"), dict), (("ports",), list), (("endpoints",), list))


def service_problems(service):
    """What is wrong in one Service as returned by the API (empty when nothing is)."""
    where = _object_name(service, "Service")
    if not isinstance(service, dict) or not isinstance(service.get("metadata"), dict):
        return [f"{where}: not an object with metadata"]
    problems = _shape_problems(service, where, SERVICE_SHAPES)
    if problems:
        return problems
    metadata, spec = service["metadata"], service.get("spec") or {}
    if not DNS1123_LABEL.matches(metadata.get("namespace")):
        problems.append(f"{where}: the namespace is not a DNS-1123 label")
    if not DNS1035_LABEL.matches(metadata.get("name")):
        problems.append(f"{where}: the name is not a DNS-1035 label")
    if spec.get("type") == "ExternalName":
        return problems  # nothing of it reaches the node
    for index, port in enumerate(spec.get("ports") or []):
        here = f"{where} spec.ports[{index}]"
        if not _port_number(port.get("port")):
            problems.append(f"{here}: port {port.get('port')!r} is not 1-65535")
        if port.get("nodePort") not in (None, 0) and not _port_number(port.get("nodePort")):
            problems.append(f"{here}: nodePort {port.get('nodePort')!r} is not 1-65535")
        _check_port_fields(port, here, problems)
    if spec.get("healthCheckNodePort") not in (None, 0) and not _port_number(spec.get("healthCheckNodePort")):
        problems.append(f"{where}: healthCheckNodePort {spec.get('healthCheckNodePort')!r} is not 1-65535")
    affinity = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    if affinity is not None and (isinstance(affinity, bool) or not isinstance(affinity, int)
                                 or not 1 <= affinity <= MAX_AFFINITY_TIMEOUT):
        problems.append(f"{where}: sessionAffinityConfig.clientIP.timeoutSeconds {affinity!r} is not "
                        f"1-{MAX_AFFINITY_TIMEOUT}")
    cluster_ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    _check_ips([ip for ip in cluster_ips if ip is not None], f"{where} spec.clusterIPs", problems,
               allowed=("None", ""))
    _check_ips(spec.get("externalIPs") or [], f"{where} spec.externalIPs", problems)
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    _check_ips([item.get("ip") for item in ingress if item.get("ip")], f"{where} status.loadBalancer.ingress",
               problems)
    return problems


def endpoint_slice_problems(endpoint_slice):
    """What is wrong in one EndpointSlice as returned by the API (empty when nothing is)."""
    where = _object_name(endpoint_slice, "EndpointSlice")
    if not isinstance(endpoint_slice, dict) or not isinstance(endpoint_slice.get("metadata"), dict):
        return [f"{where}: not an object with metadata"]
    problems = _shape_problems(endpoint_slice, where, SLICE_SHAPES)
    if problems:
        return problems
    metadata = endpoint_slice["metadata"]
    service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if endpoint_slice.get("addressType") not in KUBERNETES.values() or not service:
        return []  # FQDN slices and slices of no Service are never read
    if not DNS1123_LABEL.matches(metadata.get("namespace")):
        problems.append(f"{where}: the namespace is not a DNS-1123 label")
    if not DNS1035_LABEL.matches(service):
        problems.append(f"{where}: label {SERVICE_NAME_LABEL} {service!r} is not a Service name")
    for index, port in enumerate(endpoint_slice.get("ports") or []):
        here = f"{where} ports[{index}]"
        if port.get("port") is not None and not _port_number(port.get("port")):
            problems.append(f"{here}: port {port.get('port')!r} is not 1-65535")
        _check_port_fields(port, here, problems)
    for index, endpoint in enumerate(endpoint_slice.get("endpoints") or []):
        addresses = endpoint.get("addresses") or []
        if endpoint.get("conditions") is not None and not isinstance(endpoint.get("conditions"), dict):
            problems.append(f"{where} endpoints[{index}]: conditions is not a mapping")
        if not hints_shaped(endpoint.get("hints")):
            problems.append(f"{where} endpoints[{index}]: hints is not a mapping of forZones and forNodes, "
                            "each a list of {name: ...} entries")
        if not isinstance(addresses, list):
            problems.append(f"{where} endpoints[{index}]: addresses is not a list")
        elif addresses:
            _check_ips(addresses[:1], f"{where} endpoints[{index}].addresses", problems)
    return problems


def hints_shaped(hints):
    """Whether an endpoint's ``hints`` (None, or forZones and forNodes lists of objects) can be read."""
    if hints is None:
        return True
    if not isinstance(hints, dict):
        return False
    entries = [hints.get(field) or [] for field in ("forZones", "forNodes")]
    return all(isinstance(items, list) and all(isinstance(item, dict) for item in items) for items in entries)


def zone_hinted(endpoint_slices):
    """Whether an endpoint of the (checked) ``endpoint_slices`` has zone hints: then a node's endpoints
    depend on its zone label, and the nodes' zones must be known."""
    return any((endpoint.get("hints") or {}).get("forZones")
               for endpoint_slice in endpoint_slices for endpoint in endpoint_slice.get("endpoints") or ())


def check_cluster_objects(services, endpoint_slices):
    """Raise ValueError naming every Service and EndpointSlice with a value that must not reach a node."""
    problems = []
    for service in services:
        problems += service_problems(service)
    for endpoint_slice in endpoint_slices:
        problems += endpoint_slice_problems(endpoint_slice)
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"the Kubernetes API returned values that cannot become dataplane rules: {shown}")


class Cluster:
    """A cluster's Services and EndpointSlices, checked and parsed once, to render any number of nodes.

    Every mode's renderer takes one in place of its ``services`` (see ``as_cluster``): what depends
    on the node - its endpoints' locality and so the traffic policies, its addresses - is worked out
    per node; checking the objects, parsing addresses and sorting Services happen here, once.
    ``zones``: node name -> its topology.kubernetes.io/zone label, for endpoints with zone hints.
    ``gates``: what kube-proxy's feature gates make of them (``_kube_proxy_catalogue.gate_settings``:
    whether it programs external IPs and heeds node hints); None - their defaults.
    """

    def __init__(self, services, endpoint_slices, zones=None, gates=None):
        check_cluster_objects(services, endpoint_slices)
        self.services = sorted(services, key=service_key)
        self.endpoint_slices = endpoint_slices
        self.zones = dict(zones or {})
        self.gates = dict({"external_ips": True, "node_hints": True}, **(gates or {}))
        self._families = {}
        self._cluster_ip_families = None
        self.memo = {}  # a renderer's parts that are the same on every node, by renderer

    def __len__(self):
        return len(self.services)

    def __iter__(self):
        return iter(self.services)

    def _parsed(self, family):
        """(ServiceShapes, every endpoint as seen from no node, per node the endpoints local to it, the
        (namespace, name) of the Services with topology hints) of a family. Endpoints are shared between
        nodes; a node's own are the only ones it sees differently."""
        if family not in self._families:
            shapes = [shape for shape in (service_shape(service, family, self.gates["external_ips"])
                                          for service in self.services) if shape]
            remote, local, hinted_services = {}, {}, set()
            for key, rows in endpoint_rows(self.endpoint_slices, family, self.gates["node_hints"]).items():
                remote[key] = [Endpoint(*row[:5], False, *row[6:]) for row in rows]
                if hinted(remote[key]):
                    hinted_services.add(key[:2])
                for index, row in enumerate(rows):
                    if row[5]:
                        local.setdefault(row[5], {}).setdefault(key, []).append(
                            (index, Endpoint(*row[:5], True, *row[6:])))
            self._families[family] = (shapes, remote, local, hinted_services)
        return self._families[family]

    def service_ports(self, node_name, family):
        """Every ServicePort of one family on one node, Services in (namespace, name) order.

        A Service none of whose endpoints runs on the node nor has topology hints has the same ports
        on every such node: those are built once (as seen from no node) and are the very same objects
        in every node's list - read-only, like everything a Cluster gives. The others are built for the node."""
        shapes, remote, local, hinted_services = self._parsed(family)
        own = local.get(node_name, {}) if node_name else {}
        if not own and not (node_name and hinted_services):
            return [sp for ports in self._remote_ports(family) for sp in ports]
        endpoint_map = dict(remote)
        touched = set(hinted_services)
        for key, endpoints_here in own.items():
            endpoints = endpoint_map[key] = list(remote[key])
            for index, endpoint in endpoints_here:
                endpoints[index] = endpoint
            touched.add(key[:2])
        zone = self.zones.get(node_name)
        remote_ports = self._remote_ports(family)
        return [sp for index, shape in enumerate(shapes)
                for sp in (shape_ports(shape, endpoint_map, node_name, zone) if (shape.namespace, shape.name) in touched
                           else remote_ports[index])]

    def _remote_ports(self, family):
        """Per ServiceShape of the family, its ServicePorts as seen from no node (no endpoint local)."""
        known = self.memo.setdefault("remote_ports", {})
        if family not in known:
            shapes, remote, _local, _hinted = self._parsed(family)
            known[family] = [shape_ports(shape, remote) for shape in shapes]
        return known[family]

    def cluster_ip_families(self):
        """The families of the Services' ClusterIPs (see ``cluster_ip_families``), found once."""
        if self._cluster_ip_families is None:
            self._cluster_ip_families = cluster_ip_families(self.services)
        return self._cluster_ip_families

    def cluster_ip_ports(self, node_ips, families=()):
        """Every ``protocol/ClusterIP:port`` a node serves (the ``port_label`` spelling), from the
        Services alone: what the switch checks a mode serves, without computing any mode's state.
        The same for every node rendered for the same families: listed once per families, a copy each."""
        rendered = tuple(ip_families(self, node_ips, families))
        known = self.memo.setdefault("cluster_ip_ports", {})
        if rendered not in known:
            known[rendered] = sorted({port_label(protocol, shape.cluster_ip, port)
                                      for family in rendered for shape in self._parsed(family)[0]
                                      for _name, protocol, port, _node_port in shape.ports})
        return list(known[rendered])


def as_cluster(services, endpoint_slices, zones=None):
    """``services`` when it is a Cluster already (built once for many nodes), else a Cluster of both
    lists (and the nodes' ``zones``)."""
    return services if isinstance(services, Cluster) else Cluster(services, endpoint_slices, zones)


def ip_families(services, node_ips, families=()):
    """The IP families to render for a node, as kube-proxy picks its proxiers.

    ``services``: the Services' objects, or a Cluster. ``families``: those the node's kernel runs
    kube-proxy for, when the caller knows them (kube-proxy tests IPv6 only: /proc/net/if_inet6
    there, net.ipv6.conf.all.disable_ipv6 not 1). Both - it runs dual-stack, and both are rendered
    whatever the cluster has. One - it runs single-stack in the node's family (its node IPs must be
    of that family), and Services of the other are not rendered. None (the kernel unknown): its node
    IPs' and its Services' ClusterIPs' families (IPv4 when none)."""
    unknown = [family for family in families if family not in (IPV4, IPV6)]
    if unknown:
        raise ValueError(f"ip_families: {', '.join(map(str, unknown))} is not {IPV4} or {IPV6}")
    node_families = {family_of(ip) for ip in map(parse_ip, node_ips) if ip}
    if families:
        others = node_families - set(families)
        if others:
            raise ValueError(f"ip_families: the node runs kube-proxy for {', '.join(sorted(set(families)))} "
                             f"only, but its node IPs are {', '.join(sorted(node_families))}: list every "
                             "family its kernel runs (both where IPv6 is on)")
        return sorted(set(families))
    services_families = services.cluster_ip_families() if isinstance(services, Cluster) else cluster_ip_families(services)
    return sorted(node_families | services_families or {IPV4})


def cluster_ip_families(services):
    """The families of the Services' ClusterIPs (a set)."""
    families = set()
    for service in services:
        spec = service.get("spec") or {}
        families.update(family_of(ip) for ip in map(parse_ip, spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip)
    return families


def check_node_ips(node_ips, what="node_ips"):
    bad = [ip for ip in node_ips if parse_ip(ip) is None]
    if bad:
        raise ValueError(f"{what}: {', '.join(map(str, bad))} is not an IP address")


def sync_service_port(state, sp, node_addresses):
    """What IPVS mode programs for one ServicePort (kube-proxy's syncProxyRules, per port)."""
    protocol = sp.protocol.lower()
    for endpoint in sp.endpoints:  # hairpin: a local endpoint reaching its own Service
        if endpoint.local:
            state.add("KUBE-LOOP-BACK", entry(endpoint.address, protocol, endpoint.port, endpoint.address))

    state.add("KUBE-CLUSTER-IP", entry(sp.cluster_ip, protocol, sp.port))
    state.virtual_server(sp.cluster_ip, protocol, sp.port, sp.affinity, sp.internal_endpoints, bind=True,
                         everywhere=not (sp.internal_local or sp.hinted))

    for external_ip in sp.external_ips:
        state.add("KUBE-EXTERNAL-IP-LOCAL" if sp.external_local else "KUBE-EXTERNAL-IP",
                  entry(external_ip, protocol, sp.port))
        state.virtual_server(external_ip, protocol, sp.port, sp.affinity, sp.external_endpoints,
                             bind=external_ip not in node_addresses, everywhere=not (sp.external_local or sp.hinted))

    primary_node_ip = state.primary_address
    for lb_ip in sp.lb_ips:
        state.add("KUBE-LOAD-BALANCER", entry(lb_ip, protocol, sp.port))
        if sp.external_local:
            state.add("KUBE-LOAD-BALANCER-LOCAL", entry(lb_ip, protocol, sp.port))
        if sp.source_ranges:
            state.add("KUBE-LOAD-BALANCER-FW", entry(lb_ip, protocol, sp.port))
            for source in sp.source_ranges:
                state.add("KUBE-LOAD-BALANCER-SOURCE-CIDR", entry(lb_ip, protocol, sp.port, net_text(source)))
            if primary_node_ip and any(primary_node_ip in source for source in sp.source_ranges):
                state.add("KUBE-LOAD-BALANCER-SOURCE-IP", entry(lb_ip, protocol, sp.port, lb_ip))
        state.virtual_server(lb_ip, protocol, sp.port, sp.affinity, sp.external_endpoints,
                             bind=lb_ip not in node_addresses, everywhere=not (sp.external_local or sp.hinted))

    if sp.node_port and not state.node_ips:
        return  # as kube-proxy: nowhere to listen, and no health check port either
    if sp.node_port:
        if protocol == "sctp":
            members = [entry(ip, "sctp", sp.node_port) for ip in state.node_ips]
            sets = ["KUBE-NODE-PORT-SCTP-HASH"] + (["KUBE-NODE-PORT-LOCAL-SCTP-HASH"] if sp.external_local else [])
        else:
            members = [str(sp.node_port)]
            suffix = protocol.upper()
            sets = [f"KUBE-NODE-PORT-{suffix}"] + ([f"KUBE-NODE-PORT-LOCAL-{suffix}"] if sp.external_local else [])
        for set_name in sets:
            for member in members:
                state.add(set_name, member)
        for node_ip in state.node_ips:
            state.virtual_server(node_ip, protocol, sp.node_port, sp.affinity, sp.external_endpoints, bind=False)
    if sp.health_check_node_port:
        state.add("KUBE-HEALTH-CHECK-NODE-PORT", str(sp.health_check_node_port))


def node_state(services, endpoint_slices, node_name, node_ips, scheduler="rr", families=(),
               node_port_addresses=None, node_port_cidrs=None):
    """The IPVS-mode state of one node.

    ``node_ips``: the node's IPs (the first of each family is kube-proxy's node IP);
    ``node_port_addresses``: the node's addresses (kube-proxy lists the node's interfaces but the
    dummy link: dataplane_facts' ``node_port_addresses``), None for ``node_ips``. An external or
    load-balancer IP among either is not bound to the dummy link. IPVS mode opens NodePorts on all
    of them, unless ``node_port_cidrs`` (kube-proxy's nodePortAddresses, keywords expanded) holds
    CIDRs of the family, none a zero one: then on the addresses in them but loopback ones - the
    dummy link's included, which kube-proxy lists too once they are bound (its steady state).

    Returns ``dummy_interface`` (``addresses``), ``ipvs_sync`` (``services``), ``ipsets`` (set name
    -> sorted members as ``ipset`` prints them) and ``ipset_types``, for the families
    ``ip_families`` picks (IPv6 sets named KUBE-6-*). ``services`` lists first the virtual servers
    that depend on the node (its NodePorts, the Local traffic policies), then those the same on every
    node, each part family by family in address order; the second part is one ``SharedRun`` for all
    the nodes of one Cluster (a ``SharedTail``), built and written to state files once.
    """
    check_node_ips(node_ips)
    if node_port_addresses is not None:
        check_node_ips(node_port_addresses, "node_port_addresses")
    cluster = as_cluster(services, endpoint_slices)
    parsed_node_ips = [parse_ip(ip) for ip in node_ips]
    parsed_port_ips = parsed_node_ips if node_port_addresses is None else [parse_ip(ip) for ip in node_port_addresses]
    node_addresses = {str(ip) for ip in parsed_node_ips + parsed_port_ips}

    # what is the same on every node is kept in the cluster's memo: the virtual servers, their run
    # in every node's list, and the sort keys of addresses and set members
    memo = cluster.memo.setdefault("ipvs", {})
    address_key = memoized(ip_key, memo.setdefault("address_keys", {}))
    member_key = memoized(member_sort_key, memo.setdefault("member_keys", {}))

    def server_key(key):
        return (address_key(key[1]), key[0], key[2])

    addresses, head, shared, ipsets, ipset_types = [], [], [], {}, {}
    families = ip_families(cluster, node_ips, families)
    for family in families:
        networks = node_port_networks(node_port_cidrs, family)
        port_ips = [str(ip) for ip in sorted({ip for ip in parsed_port_ips if family_of(ip) == family}, key=int)]
        if networks is not None:
            port_ips = [ip for ip in addresses_in(networks, port_ips) if not ipaddress.ip_address(ip).is_loopback]
        primary = next((str(ip) for ip in parsed_node_ips if family_of(ip) == family), None)
        state = family_state(cluster, node_name, family, port_ips, scheduler, primary, node_addresses, memo)
        bound = [ip for ip in addresses_in(networks or [], sorted(state.bound, key=address_key)) if ip not in port_ips]
        if bound:
            state = family_state(cluster, node_name, family, sorted(port_ips + bound, key=address_key), scheduler,
                                 primary, node_addresses, memo)
        state.sets["KUBE-IPVS-IPS"] = set(state.bound)
        addresses.extend(sorted(state.bound, key=address_key))
        everywhere = set(state.shared_keys)
        head.extend(state.services[key] for key in sorted(set(state.services) - everywhere, key=server_key))
        shared.append((state.services, state.shared_keys))
        for name, members in state.sets.items():
            family_name = ipset_name(name, family)
            ipset_types[family_name] = IPSET_TYPES[name]
            ipsets[family_name] = sorted(members, key=member_key)
    return {"dummy_interface": {"addresses": addresses},
            "ipvs_sync": {"services": SharedTail(head, shared_run(memo, (tuple(families), scheduler), shared, server_key))},
            "ipsets": ipsets, "ipset_types": ipset_types, "ipset": {"sets": ipset_specs(ipsets, families)},
            "cluster_ip_ports": cluster.cluster_ip_ports(node_ips, families)}


def family_state(cluster, node_name, family, port_ips, scheduler, primary, node_addresses, memo):
    """The NodeState of one family, its NodePorts on ``port_ips``."""
    state = NodeState(family, port_ips, scheduler, primary,
                      shared=memo.setdefault(("virtual servers", family, scheduler), {}))
    for sp in cluster.service_ports(node_name, family):
        sync_service_port(state, sp, node_addresses)
    return state


def shared_run(memo, key, shared, server_key):
    """The virtual servers the same on every node, family by family in address order: the run of the
    first node rendered with these options (``key``), which the next nodes share when they claimed the
    very same ones (they do, unless one of their own addresses is also a Service's). ``shared``: per
    family (its services by key, the keys of those the same on every node)."""
    claimed = frozenset(key for _services, keys in shared for key in keys)
    known = memo.get(("run", key))
    if known is not None and known[0] == claimed:
        return known[1]
    run = SharedRun([services[key] for services, keys in shared for key in sorted(keys, key=server_key)])
    if known is None:
        memo[("run", key)] = (claimed, run)
    return run


def memoized(function, known):
    """``function`` of one argument, each result kept in ``known`` (a dict) for the next call."""
    def cached(value):
        found = known.get(value)
        if found is None:
            found = known[value] = function(value)
        return found
    return cached


def ipset_specs(ipsets, families):
    """The ``sets`` input of the ipset module: every set of every family as kube-proxy creates it,
    with exactly its members (``ipsets``, keyed by the family's names)."""
    return [ipset_spec(name, family, ipsets[ipset_name(name, family)]) for family in families for name in IPSET_TYPES]


def service_key(service):
    metadata = service.get("metadata") or {}
    return (metadata.get("namespace") or "", metadata.get("name") or "")


def member_sort_key(member):
    head = member.split(",", 1)[0]
    key = ip_key(head)
    if key is None:  # a bitmap:port member
        return (0, int(head) if head.isdigit() else 0, 0, member)
    return (1, *key, member)
