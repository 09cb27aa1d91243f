# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube-proxy's object lists, in one place: its IPVS-mode sysctls, its ipsets and their types and
create options, the IPv6 naming rule, the fixed chains each mode declares and the jumps into them,
kubelet's chains, the nftables table.

Pure data and a few small functions (no Ansible, no I/O, no import of the collection's other
modules, so everything can import this). The renderers (``_kube_proxy_state``,
``_kube_proxy_iptables``, ``_kube_proxy_ipvs_iptables``), the ownership rules of ``_dataplane``
(dataplane_facts, proxy_cleanup) and the roles (through the ``kubeipvs.node`` filters) read it.
The facts are kube-proxy v1.37's (pkg/proxy/ipvs/ipset.go and proxier.go, pkg/proxy/iptables,
cmd/kube-proxy); names older releases used are listed apart so cleanup still recognises them.
The releases rendered exactly are RENDERED_VERSIONS: the lists here hold for all of them (only
nftables mode's rules changed, in v1.36 and v1.37, which ``_kube_proxy_nftables`` follows).
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import INET, IPV4, IPV6

# --- modes and schedulers ---------------------------------------------------------------------

# The Linux proxy modes this collection renders and switches between.
PROXY_MODES = ("iptables", "ipvs", "nftables")
# The IPVS schedulers the collection configures kube-proxy with, in every role and module: the ones
# Kubernetes' IPVS documentation names. kube-proxy passes the name to the kernel unchecked ('' is
# rr); the kernel's other schedulers (fo, ovf, twos) are the ipvs_service module's, not kube-proxy's.
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")

# --- IPVS mode's sysctls ------------------------------------------------------------------------

# What the IPVS proxier of each family sets at its start, in its order (pkg/proxy/ipvs NewProxier).
IPVS_SYSCTLS = {
    "net.ipv4.vs.conntrack": 1,
    "net.ipv4.vs.expire_nodest_conn": 1,
    "net.ipv4.vs.expire_quiescent_template": 1,
    "net.ipv4.ip_forward": 1,
}
# ... with ipvs.strictARP,
IPVS_STRICT_ARP_SYSCTLS = {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}
# ... and on a kernel from the first with the sysctl up to the one that fixed connection reuse
# (kubernetes issue 93297), where it is left as it is.
IPVS_CONN_REUSE_SYSCTLS = {"net.ipv4.vs.conn_reuse_mode": 0}
IPVS_CONN_REUSE_KERNELS = ((4, 1), (5, 9))


def ipvs_sysctls(kernel_release: str, strict_arp: bool) -> dict[str, int]:
    """The sysctls kube-proxy's IPVS mode sets on a kernel of this release (``uname -r``)."""
    found = re.match(r"(\d+)\.(\d+)", kernel_release or "")
    if not found:
        raise ValueError(f"kernel release {kernel_release!r}: expected MAJOR.MINOR..., as uname -r prints it")
    release = (int(found.group(1)), int(found.group(2)))
    low, high = IPVS_CONN_REUSE_KERNELS
    return {**IPVS_SYSCTLS,
            **(IPVS_CONN_REUSE_SYSCTLS if low <= release < high else {}),
            **(IPVS_STRICT_ARP_SYSCTLS if strict_arp else {})}


# --- IPVS mode's ipsets ------------------------------------------------------------------------

IPSET_NAME_MAX = 31
# kube-proxy's create options: hash sets take hashsize and maxelem, bitmap:port sets a range.
IPSET_HASHSIZE, IPSET_MAXELEM, IPSET_PORT_RANGE = 1024, 65536, "0-65535"

# Every set and its type, in kube-proxy's ipsetInfo order (the order it creates them in).
IPSET_TYPES = {
    "KUBE-LOOP-BACK": "hash:ip,port,ip",
    "KUBE-CLUSTER-IP": "hash:ip,port",
    "KUBE-EXTERNAL-IP": "hash:ip,port",
    "KUBE-EXTERNAL-IP-LOCAL": "hash:ip,port",
    "KUBE-LOAD-BALANCER": "hash:ip,port",
    "KUBE-LOAD-BALANCER-FW": "hash:ip,port",
    "KUBE-LOAD-BALANCER-LOCAL": "hash:ip,port",
    "KUBE-LOAD-BALANCER-SOURCE-IP": "hash:ip,port,ip",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": "hash:ip,port,net",
    "KUBE-NODE-PORT-TCP": "bitmap:port",
    "KUBE-NODE-PORT-LOCAL-TCP": "bitmap:port",
    "KUBE-NODE-PORT-UDP": "bitmap:port",
    "KUBE-NODE-PORT-LOCAL-UDP": "bitmap:port",
    "KUBE-NODE-PORT-SCTP-HASH": "hash:ip,port",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "hash:ip,port",
    "KUBE-HEALTH-CHECK-NODE-PORT": "bitmap:port",
    "KUBE-IPVS-IPS": "hash:ip",
}
# Names of releases before the SCTP sets became hash:ip,port: cleanup still owns them.
LEGACY_IPVS_SETS = ("KUBE-NODE-PORT-SCTP", "KUBE-NODE-PORT-LOCAL-SCTP")


def ipset_name(name, family):
    """kube-proxy's name of a set in an IP family: IPv6 swaps the KUBE- prefix for KUBE-6-, cut to 31."""
    if family == IPV6:
        name = "KUBE-6-" + name[len("KUBE-"):]
    return name[:IPSET_NAME_MAX]


def ipvs_set_names(family):
    """Every set name IPVS mode owns in a family, current and legacy."""
    return [ipset_name(name, family) for name in (*IPSET_TYPES, *LEGACY_IPVS_SETS)]


def ipset_spec(name, family, members=None, hashsize=IPSET_HASHSIZE, maxelem=IPSET_MAXELEM,
               port_range=IPSET_PORT_RANGE):
    """One entry of the ipset module's ``sets`` option for kube-proxy's set ``name`` (its IPv4 name)
    in ``family``: created as kube-proxy creates it; ``members`` None leaves the members alone."""
    set_type = IPSET_TYPES[name]
    bitmap = set_type.startswith("bitmap:")
    spec = {"name": ipset_name(name, family), "type": set_type, "family": INET[family],
            "hashsize": None if bitmap else hashsize, "maxelem": None if bitmap else maxelem,
            "range": port_range if set_type == "bitmap:port" else None}
    if members is not None:
        spec["members"] = members
    return spec


# --- iptables chains ---------------------------------------------------------------------------

# iptables mode's iptablesJumpChains and iptablesKubeletJumpChains: (table, chain, parent, comment,
# match args). kube-proxy prepends each missing jump in this order (EnsureRule Prepend).
NEW = "-m conntrack --ctstate NEW"
IPTABLES_JUMPS = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", NEW),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", NEW),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", NEW),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", NEW),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", NEW),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", NEW),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", NEW),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", "KUBE-FIREWALL", "INPUT", None, ""),
    ("filter", "KUBE-FIREWALL", "OUTPUT", None, ""),
)
# IPVS mode's iptablesJumpChain: (table, chain, parent, comment, match args); each missing jump is
# inserted at the top of its parent, in this order.
IPVS_JUMPS = (
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "KUBE-NODE-PORT", "INPUT", "kubernetes health check rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kube-proxy firewall rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kube-proxy firewall rules", ""),
    ("filter", "KUBE-IPVS-FILTER", "INPUT", "kubernetes ipvs access filter", ""),
    ("filter", "KUBE-IPVS-OUT-FILTER", "OUTPUT", "kubernetes ipvs access filter", ""),
)
# The chains IPVS mode declares (and so rewrites whole) at every sync, in its order.
IPVS_DECLARED = {
    "nat": ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"),
    "filter": ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
               "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"),
}
# The chains iptables mode declares at every sync, in its order (its per-Service chains apart).
IPTABLES_DECLARED = {
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"),
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"),
}
# iptables mode's per-Service chains (nat): current prefixes plus the KUBE-XLB- of releases before 1.24.
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-", "KUBE-XLB-")

# Fixed-name chains each mode owns, per table, for ownership and cleanup: the declared ones plus
# the canaries and the chains older releases wrote (KUBE-MARK-DROP, kube-proxy's KUBE-FIREWALL).
# A name in both modes of one table is shared.
IPTABLES_CHAINS = {
    "nat": (*IPTABLES_DECLARED["nat"], "KUBE-MARK-DROP", "KUBE-PROXY-CANARY", "KUBE-FIREWALL"),
    "filter": (*IPTABLES_DECLARED["filter"], "KUBE-PROXY-CANARY"),
    "mangle": ("KUBE-PROXY-CANARY",),
}
IPVS_CHAINS = {
    "nat": (*IPVS_DECLARED["nat"], "KUBE-MARK-DROP", "KUBE-FIREWALL"),
    "filter": IPVS_DECLARED["filter"],
    "mangle": (),
}
# kubelet's own chains (pkg/kubelet/kubelet_network_linux.go): never removed by any mode.
KUBELET_CHAINS = {"filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"), "nat": ("KUBE-KUBELET-CANARY",),
                  "mangle": ("KUBE-KUBELET-CANARY",)}

# --- nftables mode and the dummy link ------------------------------------------------------------

NFT_TABLE = "kube-proxy"
# nftables mode's verdict map of ClusterIP, external IP and load-balancer IP . protocol . port.
NFT_SERVICE_MAP = "service-ips"
# ... and of the same keys for Services without endpoints (rejected or dropped).
NFT_NO_ENDPOINT_MAP = "no-endpoint-services"
DEFAULT_DUMMY_INTERFACE = "kube-ipvs0"

# --- versions -----------------------------------------------------------------------------------

# The kube-proxy minor releases the renderers reproduce, each proven against its binary: the newest
# and the three before it (kube-proxy may be up to three minors older than the API server).
RENDERED_VERSIONS = ((1, 34), (1, 35), (1, 36), (1, 37))
# A version in an image tag or a server's gitVersion: v1.34.4, 1.34, v1.34.4-eks-1-34-20260101.
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?")


def parse_version(text):
    """``(major, minor, patch)`` of a Kubernetes version (v1.34.4, 1.34, v1.34.4-eks-...), None if
    it is not one. A missing patch is 0."""
    match = _VERSION.fullmatch(str(text or "").strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def image_tag(image):
    """The tag of a container image reference (``registry:5000/kube-proxy:v1.34.4[@sha256:...]``
    -> ``v1.34.4``), None when it has none (a digest alone, or the colon is a registry's port)."""
    reference = str(image or "").split("@", 1)[0]
    name, _sep, tag = reference.rpartition(":")
    return tag if name and "/" not in tag else None


def rendered_version(version):
    """The release the renderers reproduce for a kube-proxy ``(major, minor[, patch])``: its own when
    proven, else the nearest proven one (the oldest for older, the newest for newer releases)."""
    return max(RENDERED_VERSIONS[0], min(RENDERED_VERSIONS[-1], tuple(version[:2])))


def check_version(version):
    """``version`` as a proven ``(major, minor)`` the renderers take; ValueError otherwise."""
    try:
        minor = tuple(int(part) for part in version)
    except (TypeError, ValueError):
        minor = None
    if minor not in RENDERED_VERSIONS:
        raise ValueError(f"version: {version!r} is not a kube-proxy release rendered here "
                         f"({', '.join('.'.join(map(str, v)) for v in RENDERED_VERSIONS)})")
    return minor


# The first release that runs no IPv6 proxier where the kernel has IPv6 switched off
# (net.ipv6.conf.all.disable_ipv6 1); older ones test /proc/net/if_inet6 alone.
IPV6_OFF_TESTED_FROM = (1, 36)


def proxier_families(ipv6, version):
    """The IP families kube-proxy ``version`` (``(major, minor[, patch])``) runs a proxier for on a node
    whose kernel reads as ``ipv6`` - dataplane_facts' ``ipv6``: ``kernel`` (/proc/net/if_inet6 exists)
    and ``disabled`` (net.ipv6.conf.all.disable_ipv6 is 1; None when unknown, taken as on). IPv6 too
    wherever the kernel has it, in an IPv4-only cluster as well; where it is switched off, from v1.36
    IPv4 alone, also in a dual-stack cluster."""
    if not isinstance(ipv6, dict) or not isinstance(ipv6.get("kernel"), bool) \
            or "disabled" not in ipv6 or ipv6["disabled"] not in (True, False, None):
        raise ValueError(f"ipv6: expected dataplane_facts' ipv6 (kernel: bool, disabled: bool or null), got {ipv6!r}")
    try:
        minor = tuple(int(part) for part in version)[:2]
    except (TypeError, ValueError):
        minor = ()
    if len(minor) != 2:
        raise ValueError(f"version: expected a kube-proxy release as (major, minor[, patch]), got {version!r}")
    off = ipv6["disabled"] is True and minor >= IPV6_OFF_TESTED_FROM
    return [IPV4, IPV6] if ipv6["kernel"] and not off else [IPV4]


# --- feature gates ------------------------------------------------------------------------------

# The gates that change what kube-proxy programs, each with the first release that has it, the last
# release where it may be set (None: every rendered one) and its default there (pkg/features).
# AllowServiceExternalIPs off: no Service's externalIPs are programmed (pkg/proxy/serviceport.go).
# PreferSameTrafficDistribution off (settable in v1.34 alone, locked on from v1.35): endpoints'
# node hints are ignored (pkg/proxy/endpointslicecache.go). KubeProxyNFTablesLocalhostNodePorts on:
# nftables mode serves localhost NodePorts from a userspace proxy, with rules the collection does
# not render. KubeProxyIPVS off (deprecated from v1.37): kube-proxy refuses IPVS mode.
ALLOW_EXTERNAL_IPS = "AllowServiceExternalIPs"
PREFER_SAME_NODE = "PreferSameTrafficDistribution"
NFT_LOCALHOST_NODE_PORTS = "KubeProxyNFTablesLocalhostNodePorts"
IPVS_GATE = "KubeProxyIPVS"
DATAPLANE_GATES = {
    ALLOW_EXTERNAL_IPS: ((1, 36), None, True),
    PREFER_SAME_NODE: ((1, 34), (1, 34), True),
    NFT_LOCALHOST_NODE_PORTS: ((1, 37), None, False),
    IPVS_GATE: ((1, 37), None, True),
}
# Gate values that rule a mode out: gate -> (mode, the value, why).
REFUSED_GATES = {
    NFT_LOCALHOST_NODE_PORTS: ("nftables", True, "makes kube-proxy serve localhost NodePorts with rules the "
                               "collection does not render; switch it off (its default) to pre-program nftables mode"),
    IPVS_GATE: ("ipvs", False, "makes kube-proxy refuse IPVS mode; choose another mode, or remove the gate"),
}


def gate_settings(gates, version, mode):
    """What kube-proxy ``version`` in ``mode`` does with its featureGates ``gates`` (name -> bool), for
    the renderers: {"external_ips": bool, "node_hints": bool}. ValueError naming a gate set to a value
    the collection does not render in ``mode``; gates the release does not have, or may not set, and
    every other gate are what kube-proxy makes of them (it refuses to start on an unknown one)."""
    minor = tuple(version)[:2]

    def value(name):
        first, last, default = DATAPLANE_GATES[name]
        if minor < first or (last is not None and minor > last):
            return default
        flag = (gates or {}).get(name)
        return default if flag is None else flag

    for name, (refused_mode, refused, why) in REFUSED_GATES.items():
        if mode == refused_mode and minor >= DATAPLANE_GATES[name][0] and value(name) is refused:
            raise ValueError(f"feature_gates: {name}={str(refused).lower()} on kube-proxy "
                             f"{'.'.join(map(str, minor))} {why}")
    return {"external_ips": value(ALLOW_EXTERNAL_IPS), "node_hints": value(PREFER_SAME_NODE)}


# --- nodePortAddresses, localhost NodePorts and iptables mode's sysctl --------------------------

# kube-proxy's nodePortAddresses keywords: "primary" (the node's IP of each family, /32 and /128)
# as the whole list in every rendered release; from v1.37 also "localhost" (127.0.0.0/8 and ::1/128)
# and "all" (both zero CIDRs), and each of them anywhere in the list (cmd/kube-proxy server.go).
NODE_PORT_PRIMARY = "primary"
NODE_PORT_KEYWORDS_FROM = (1, 37)
NODE_PORT_KEYWORDS = {"primary": None, "localhost": ("127.0.0.0/8", "::1/128"), "all": ("0.0.0.0/0", "::/0")}
# iptables mode sets it where it accepts NodePorts on 127.0.0.0/8 (pkg/proxy/iptables NewProxier)
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"


def node_port_cidrs(configured, node_ips, version):
    """kube-proxy ``version``'s nodePortAddresses ``configured`` with its keywords expanded, as its
    proxiers take them: "primary" is the first of ``node_ips`` of each family that is not a loopback
    address, as a /32 or /128. ValueError for an entry that is neither a CIDR nor a keyword of that
    release, naming it."""
    minor = tuple(version)[:2]
    keywords = minor >= NODE_PORT_KEYWORDS_FROM
    configured = list(configured or ())
    if not keywords and configured == [NODE_PORT_PRIMARY]:
        return primary_cidrs(node_ips)
    expanded = []
    for index, entry in enumerate(configured):
        if keywords and entry in NODE_PORT_KEYWORDS:
            expanded += primary_cidrs(node_ips) if entry == NODE_PORT_PRIMARY else list(NODE_PORT_KEYWORDS[entry])
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            allowed = ", ".join(NODE_PORT_KEYWORDS) if keywords else f"{NODE_PORT_PRIMARY} (as the only entry)"
            raise ValueError(f"node_port_cidrs[{index}]: {entry!r} is not a CIDR nor a keyword kube-proxy "
                             f"{'.'.join(map(str, minor))} knows ({allowed})") from None
        expanded.append(entry)
    return expanded


def primary_cidrs(node_ips):
    cidrs, seen = [], set()
    for text in node_ips or ():
        ip = ipaddress.ip_address(str(text))
        if ip.version not in seen:
            seen.add(ip.version)
            if not ip.is_loopback:
                cidrs.append(f"{ip}/{ip.max_prefixlen}")
    return cidrs


def node_port_networks(cidrs, family):
    """The networks of ``family`` in the expanded ``cidrs`` kube-proxy's proxier of that family
    accepts NodePorts on; None when it accepts them on every local address (no CIDR of the family, or
    a zero one among them)."""
    version = 4 if family == IPV4 else 6
    networks = [network for network in (ipaddress.ip_network(cidr, strict=False) for cidr in cidrs or ())
                if network.version == version]
    if not networks or any(network.prefixlen == 0 for network in networks):
        return None
    return networks


def addresses_in(networks, addresses):
    """The ``addresses`` (plain IP strings, the node's interfaces' as kube-proxy lists them) inside
    one of ``networks`` (``node_port_networks``'), each once, in their order, as text."""
    found = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(str(text))
        except ValueError:
            continue
        if str(ip) not in found and any(ip in network for network in networks):
            found.append(str(ip))
    return found


def localhost_node_ports(enabled, cidrs):
    """Whether iptables mode accepts NodePorts on 127.0.0.0/8: iptables.localhostNodePorts
    (``enabled``; None is kube-proxy's default, true) and an IPv4 entry of the expanded ``cidrs``
    holding 127.0.0.0 (every local address, when there is none)."""
    if enabled is False:
        return False
    networks = node_port_networks(cidrs, IPV4)
    loopback = ipaddress.ip_address("127.0.0.0")
    return networks is None or any(network.network_address.is_loopback or loopback in network for network in networks)


def iptables_sysctls(families, localhost):
    """The sysctls kube-proxy's iptables mode sets on a node running proxiers for ``families``:
    route_localnet, by the IPv4 proxier, where it serves localhost NodePorts (``localhost``)."""
    return {ROUTE_LOCALNET: 1} if IPV4 in families and localhost else {}
