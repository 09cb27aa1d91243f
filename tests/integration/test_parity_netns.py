# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Parity with the real kube-proxy in iptables and nftables mode. The real kube-proxy - built from the
Kubernetes release the lab runs, started by the real DaemonSet on a node of the real cluster (a
network namespace with an IPv4 and an IPv6 address, both the Node's InternalIPs) - programs node1 from
a cluster holding every Service shape it handles, in IPv4, dual-stack and IPv6; kube_proxy_state
renders the same node from the same API server and iptables_chain or nftables_table programs a fresh
namespace with it. The normalised dumps of both must be equal, line for line; the only differences
allowed are the ones docs/kube-proxy.md lists with their reason (KNOWN_DIFFERENCES below). Each test
runs for every kube-proxy release the lab built (KUBE_PROXY_VERSIONS), kube_proxy_state reading the
release from the DaemonSet's image."""

from __future__ import annotations

import difflib
import itertools
import json
import re
import subprocess
import time

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    IPV6_OFF_TESTED_FROM,
    NODE_PORT_KEYWORDS_FROM,
    parse_version,
    proxier_families,
)
from conftest import NetNS
from kube_cluster import KUBE_PROXY_IMAGES, KUBE_PROXY_VERSIONS
from kube_fixtures import KUBEADM_CONFIG_IN_A_NAMESPACE, seed_kubeadm_kube_proxy

NODE = "node1"
NAMESPACE = "default"
MANAGED_BY = {"endpointslice.kubernetes.io/managed-by": "parity.kubeipvs.test",
              "kubernetes.io/service-name": None}


def service(name, ports, service_type="ClusterIP", **spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": dict(spec, type=service_type, ports=ports)}


def port(name, number, protocol="TCP", target=None, node_port=None):
    entry = {"name": name, "port": number, "protocol": protocol, "targetPort": target or number}
    if node_port:
        entry["nodePort"] = node_port
    return entry


def endpoint(address, node, ready=True, serving=None, terminating=False, zones=(), nodes=()):
    serving = ready if serving is None else serving
    result = {"addresses": [address], "nodeName": node,
              "conditions": {"ready": ready, "serving": serving, "terminating": terminating}}
    if zones or nodes:  # the EndpointSlice controller's topology hints, for a Service's trafficDistribution
        result["hints"] = {"forZones": [{"name": zone} for zone in zones], "forNodes": [{"name": n} for n in nodes]}
    return result


def endpoint_slice(service_name, suffix, endpoints, ports, address_type="IPv4"):
    labels = dict(MANAGED_BY, **{"kubernetes.io/service-name": service_name})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-{suffix}", "namespace": NAMESPACE, "labels": labels},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": name, "port": number, "protocol": protocol} for name, number, protocol in ports]}


# Every Service shape kube-proxy handles, in IPv4, and dual-stack and IPv6 Services (NodePorts among
# them) on nodes with an IPv4 and an IPv6 InternalIP.
SERVICES = [
    service("web", [port("http", 80, target="http"), port("https", 443, target=8443)]),
    service("dns", [port("dns", 53, "UDP"), port("dns-tcp", 53)]),
    service("signal", [port("sctp", 7777, "SCTP")]),
    service("shop", [port("http", 8080, node_port=30080)], "NodePort"),
    service("sticky", [port("http", 80)], sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
    service("local-only", [port("http", 80)], internalTrafficPolicy="Local"),
    service("external", [port("http", 80)], externalIPs=["198.51.100.7"]),
    service("balancer", [port("http", 80, node_port=30081)], "LoadBalancer", externalTrafficPolicy="Local",
            loadBalancerSourceRanges=["203.0.113.0/24"]),
    service("balancer-cluster", [port("http", 80, node_port=30082)], "LoadBalancer"),
    service("empty", [port("http", 80)]),
    service("empty-nodeport", [port("http", 80, node_port=30083)], "NodePort"),
    service("headless", [port("http", 80)], clusterIP="None"),
    service("draining", [port("http", 80, node_port=30084)], "NodePort", externalTrafficPolicy="Local"),
    service("dual", [port("http", 80, node_port=30085), port("dns", 53, "UDP")], "NodePort",
            ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"]),
    service("six", [port("http", 80)], ipFamilyPolicy="SingleStack", ipFamilies=["IPv6"],
            externalIPs=["2001:db8:7::7"], sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}}),
    service("six-local", [port("http", 80, node_port=30086)], "NodePort", ipFamilyPolicy="SingleStack",
            ipFamilies=["IPv6"], externalTrafficPolicy="Local"),
    # topology-aware routing: the endpoints' hints, against node1's zone (ZONES) and name
    service("zonal", [port("http", 80)], trafficDistribution="PreferClose"),
    service("zonal-away", [port("http", 80)], trafficDistribution="PreferClose"),
    service("zonal-partial", [port("http", 80)], trafficDistribution="PreferClose"),
    service("same-node", [port("http", 80)], trafficDistribution="PreferSameNode"),
    service("zonal-local", [port("http", 80, node_port=30087)], "NodePort", externalTrafficPolicy="Local",
            trafficDistribution="PreferClose"),
    service("zonal-six", [port("http", 80)], ipFamilyPolicy="SingleStack", ipFamilies=["IPv6"],
            trafficDistribution="PreferClose"),
]
# The nodes' topology.kubernetes.io/zone labels.
ZONES = {NODE: "zone-a", "node2": "zone-b", "node3": "zone-a"}
HERE6, THERE6 = "fd00:10:244:1::", "fd00:10:244:2::"
HERE, THERE, YONDER = "10.244.1", "10.244.2", "10.244.3"
SLICES = [
    endpoint_slice("web", "a", [endpoint(f"{HERE}.10", NODE), endpoint(f"{THERE}.10", "node2"),
                                endpoint(f"{YONDER}.10", "node3", ready=False, serving=False)],
                   [("http", 8080, "TCP"), ("https", 8443, "TCP")]),
    endpoint_slice("dns", "a", [endpoint(f"{HERE}.53", NODE), endpoint(f"{THERE}.53", "node2")],
                   [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]),
    endpoint_slice("signal", "a", [endpoint(f"{THERE}.77", "node2")], [("sctp", 7777, "SCTP")]),
    endpoint_slice("shop", "a", [endpoint(f"{THERE}.80", "node2"), endpoint(f"{YONDER}.80", "node3")],
                   [("http", 8080, "TCP")]),
    endpoint_slice("shop", "b", [endpoint(f"{HERE}.80", NODE)], [("http", 8080, "TCP")]),
    endpoint_slice("sticky", "a", [endpoint(f"{HERE}.11", NODE), endpoint(f"{THERE}.11", "node2")],
                   [("http", 80, "TCP")]),
    endpoint_slice("local-only", "a", [endpoint(f"{THERE}.12", "node2"), endpoint(f"{HERE}.12", NODE)],
                   [("http", 80, "TCP")]),
    endpoint_slice("external", "a", [endpoint(f"{THERE}.13", "node2")], [("http", 80, "TCP")]),
    endpoint_slice("balancer", "a", [endpoint(f"{HERE}.14", NODE), endpoint(f"{THERE}.14", "node2")],
                   [("http", 80, "TCP")]),
    endpoint_slice("balancer-cluster", "a", [endpoint(f"{THERE}.15", "node2")], [("http", 80, "TCP")]),
    endpoint_slice("headless", "a", [endpoint(f"{THERE}.16", "node2")], [("http", 80, "TCP")]),
    # the node's only local endpoint is terminating but still serving; another node has a ready one
    endpoint_slice("draining", "a", [endpoint(f"{HERE}.17", NODE, ready=False, serving=True, terminating=True),
                                     endpoint(f"{THERE}.17", "node2")], [("http", 80, "TCP")]),
    endpoint_slice("dual", "a", [endpoint(f"{HERE}.20", NODE), endpoint(f"{THERE}.20", "node2")],
                   [("http", 8080, "TCP"), ("dns", 53, "UDP")]),
    endpoint_slice("dual", "b", [endpoint(f"{HERE6}20", NODE), endpoint(f"{THERE6}20", "node2")],
                   [("http", 8080, "TCP"), ("dns", 53, "UDP")], "IPv6"),
    endpoint_slice("six", "a", [endpoint(f"{HERE6}21", NODE), endpoint(f"{THERE6}21", "node2")],
                   [("http", 80, "TCP")], "IPv6"),
    endpoint_slice("six-local", "a", [endpoint(f"{THERE6}22", "node2")], [("http", 80, "TCP")], "IPv6"),
    # every ready endpoint hinted, two for node1's zone: those alone (the not-ready one has no say)
    endpoint_slice("zonal", "a", [endpoint(f"{HERE}.30", NODE, zones=["zone-a"]),
                                  endpoint(f"{THERE}.30", "node2", zones=["zone-b"]),
                                  endpoint(f"{YONDER}.30", "node3", zones=["zone-a"]),
                                  endpoint(f"{THERE}.130", "node2", ready=False)], [("http", 80, "TCP")]),
    # none hinted for node1's zone: every ready endpoint
    endpoint_slice("zonal-away", "a", [endpoint(f"{THERE}.31", "node2", zones=["zone-b"]),
                                       endpoint(f"{YONDER}.31", "node3", zones=["zone-b"])], [("http", 80, "TCP")]),
    # one ready endpoint without a hint: hints ignored
    endpoint_slice("zonal-partial", "a", [endpoint(f"{THERE}.32", "node2", zones=["zone-a"]),
                                          endpoint(f"{YONDER}.32", "node3")], [("http", 80, "TCP")]),
    # node hints on every endpoint, one for node1: that one alone, before the zone hints
    endpoint_slice("same-node", "a", [endpoint(f"{HERE}.33", NODE, zones=["zone-a"], nodes=[NODE]),
                                      endpoint(f"{YONDER}.33", "node3", zones=["zone-a"], nodes=["node3"])],
                   [("http", 80, "TCP")]),
    # the ClusterIP takes the zone's endpoint (on node2), external traffic node1's own (hinted elsewhere)
    endpoint_slice("zonal-local", "a", [endpoint(f"{HERE}.34", NODE, zones=["zone-b"]),
                                        endpoint(f"{THERE}.34", "node2", zones=["zone-a"])], [("http", 80, "TCP")]),
    endpoint_slice("zonal-six", "a", [endpoint(f"{HERE6}35", NODE, zones=["zone-b"]),
                                      endpoint(f"{THERE6}35", "node2", zones=["zone-a"]),
                                      endpoint(f"{THERE6}135", "node2", zones=["zone-b"])],
                   [("http", 80, "TCP")], "IPv6"),
]
LOAD_BALANCER_STATUS = {"balancer": "192.0.2.80", "balancer-cluster": "192.0.2.81"}

# What the real kube-proxy writes and the collection does not, each for a reason docs/kube-proxy.md
# gives ("Parity with the real kube-proxy"): (pattern on a normalised line, what to do, reason).
KNOWN_DIFFERENCES = [
    (re.compile(r"^\S+ (:KUBE-PROXY-CANARY$|-A KUBE-PROXY-CANARY )"), "drop",
     "the canary chains kube-proxy watches to notice a flush of its tables"),
    (re.compile(r"-m nfacct --nfacct-name localhost_nps_accepted_pkts "), "drop",
     "a counting-only copy of the next NodePort rule for 127.0.0.0/8 (kube-proxy's metrics)"),
    (re.compile(r"-m nfacct --nfacct-name \S+ "), "strip",
     "a counting-only match (kube-proxy's nfacct metrics objects, which kube-proxy creates)"),
]
# kube-proxy walks its Services in map order: in these chains one rule per Service port follows
# another in no defined order (the chains' other rules keep their places).
SERVICE_ORDER_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL")


def known_differences_removed(lines):
    kept = []
    for line in lines:
        for pattern, action, _reason in KNOWN_DIFFERENCES:
            if pattern.search(line) and action == "drop":
                break
            line = pattern.sub("", line)
        else:
            kept.append(line)
    return kept


def seed_cluster(cluster):
    for node, zone in ZONES.items():
        cluster.call("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}},
                     content_type="application/merge-patch+json")
    for obj in SERVICES + SLICES:
        cluster.add(obj)
    for name, address in LOAD_BALANCER_STATUS.items():
        cluster.call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/services/{name}/status",
                     {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}},
                     content_type="application/merge-patch+json")


def in_node(cluster, command):
    namespace = cluster.kube.namespaces[NODE]
    return subprocess.run(["ip", "netns", "exec", namespace, "sh", "-c", command],
                          capture_output=True, text=True, check=True).stdout


def interface_addresses(cluster):
    """Every address of the node's interfaces, lo's too, as kube-proxy lists them for nodePortAddresses."""
    return [line.split()[3].split("/")[0] for line in in_node(cluster, "ip -o addr show").splitlines()]


def iptables_dump(run, save="iptables-save"):
    """kube-proxy's part of ``iptables-save`` (or ``ip6tables-save``, its tables named ``ip6/nat``
    and so on): per table its KUBE-* chains (sorted), then the rules in them and the jumps to them
    from the built-in chains, in their order, without counters; runs of per-Service rules in
    SERVICE_ORDER_CHAINS sorted."""
    chains, rules = [], []
    table = None
    for line in run(save).splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line.startswith("*"):
            table = ("ip6/" if save.startswith("ip6") else "") + line[1:]
        elif line.startswith(":KUBE-"):
            chains.append(f"{table} {line.split()[0]}")
        elif line.startswith("-A ") and (line.split()[1].startswith("KUBE-") or " -j KUBE-" in line):
            rules.append(f"{table} {line}")
    # Consecutive per-Service rules of one chain form a group, sorted; every other rule is its own.
    groups = itertools.groupby(rules, key=lambda rule: (rule.split()[:3], per_service(rule) or rule))
    return sorted(chains) + [rule for _key, group in groups for rule in sorted(group)]


def both_families(run):
    return iptables_dump(run) + iptables_dump(run, "ip6tables-save") + sysctl_lines(run)


# The sysctls of the node's namespace kube-proxy sets in iptables or nftables mode (the namespace's
# own; its conntrack settings are left alone in a namespace, KUBEADM_CONFIG_IN_A_NAMESPACE).
NAMESPACE_SYSCTLS = ("net.ipv4.conf.all.route_localnet",)


def sysctl_lines(run):
    return [f"sysctl {line.strip()}" for line in run(f"sysctl {' '.join(NAMESPACE_SYSCTLS)}").splitlines()]


def sysctls_reset(run):
    """The node's NAMESPACE_SYSCTLS back at the kernel's defaults (what an earlier kube-proxy set stays)."""
    run(f"sysctl -qw {' '.join(f'{name}=0' for name in NAMESPACE_SYSCTLS)}")


def per_service(rule):
    return rule.split()[2] in SERVICE_ORDER_CHAINS and ' --comment "' in rule


def steady(dump, tries=40, quiet=3):
    """A dump that no longer changes for ``quiet`` looks 2 s apart: kube-proxy is Ready after its
    first sync and syncs again as more of the cluster arrives (its ServiceCIDRs, which a loaded host
    delivers seconds later - one quiet look was once too few)."""
    last, same = dump(), 0
    for _attempt in range(tries):
        time.sleep(2)
        current = dump()
        same = same + 1 if current == last else 0
        if same >= quiet:
            return current
        last = current
    raise AssertionError("kube-proxy kept rewriting the node's rules")


def differences(real, ours):
    real = known_differences_removed(real)
    return [line for line in difflib.unified_diff(real, ours, "real kube-proxy", "kubeipvs.node", n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def first_sync_done(cluster, tries=90):
    """Until node1's kube-proxy says it is healthy (every family's proxier has synced) and its sync
    metric counts a sync: its pod is Ready as soon as it runs (kubeadm's DaemonSet has no readiness
    probe), and on a loaded machine the first sync may come seconds later."""
    probe = ("curl -fsS -m 2 http://127.0.0.1:10256/healthz >/dev/null && curl -fsS -m 2 "
             "http://127.0.0.1:10249/metrics | grep -E '^kubeproxy_sync_proxy_rules_duration_seconds_count' || true")
    for _attempt in range(tries):
        counts = [float(line.split()[-1]) for line in in_node(cluster, probe).splitlines() if line.strip()]
        if counts and min(counts) >= 1:
            return
        time.sleep(1)
    raise AssertionError("kube-proxy did not finish its first sync")


def start_kube_proxy(cluster, mode, dump, version, configure=None, synced=None):
    """kubeadm's kube-proxy ``version`` in ``mode`` on every node (its configuration passed through
    ``configure``, a function of its text, when given), waited for until Ready and its first sync done
    (then ``synced`` is called, when given, before the test changes anything); node1's ``dump`` once it
    stops changing."""
    config = KUBEADM_CONFIG_IN_A_NAMESPACE.replace('mode: ""', f"mode: {mode}")
    assert f"mode: {mode}" in config
    if configure is not None:
        config = configure(config)
    seed_kubeadm_kube_proxy(cluster, config_text=config, image=KUBE_PROXY_IMAGES[version])
    first_sync_done(cluster)
    if synced is not None:
        synced()
    zone_announced(cluster)
    if mode == "nftables":
        service_cidrs_synced(cluster)
    return steady(lambda: dump(lambda command: in_node(cluster, command)))


def full_syncs(cluster):
    """node1's kube-proxy's full syncs so far, per proxier (its metric's label set -> count)."""
    metrics = in_node(cluster, "curl -fsS -m 2 http://127.0.0.1:10249/metrics || true")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("kubeproxy_sync_full_proxy_rules_duration_seconds_count")}


def full_sync_after(cluster, counts, tries=60):
    """Until every proxier of node1's kube-proxy has done a full sync more than ``counts`` (full_syncs')."""
    for _attempt in range(tries):
        now = full_syncs(cluster)
        if now and all(now.get(key, 0) > value for key, value in counts.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"kube-proxy did no full sync after its node's zone changed: {counts} -> {now}")


def zone_changed_and_back(cluster):
    """node1's zone label changed and set back, each change waited for until every proxier of its
    kube-proxy has done a full sync after it."""
    zone = "topology.kubernetes.io/zone"
    before = cluster.get("Node", NODE)["metadata"].get("labels", {}).get(zone)
    for value in (f"{before}-changed", before):
        counts = full_syncs(cluster)
        cluster.patch("Node", NODE, {"metadata": {"labels": {zone: value}}})
        full_sync_after(cluster, counts)


def zone_announced(cluster):
    """Until node1's kube-proxy knows its node's zone. Every release can miss it at start: it adds the
    handler that tracks the zone label to the node informer, already running, before it registers the
    proxier with that handler, so the informer may deliver the Node first - to no proxier - and the
    handler then passes on changes of the label only. That kube-proxy serves every zone-hinted
    endpoint until the label changes (seen under load on this host, in both modes); changing it and
    back makes it learn the zone, as any later change of the label does."""
    zone_changed_and_back(cluster)


def service_cidrs_synced(cluster, tries=60, nudge_after=5):
    """Until every kube-proxy table on node1 drops traffic to unallocated ClusterIPs. kube-proxy's
    nftables mode learns the cluster's ServiceCIDRs from an informer it does not wait for before its
    first sync, and writes the rule only in a full sync: when the CIDRs arrive after the first one,
    the rule waits for the next full sync, an hour later (``FullSyncPeriod``) unless something forces
    one sooner. A change of the node's topology labels is such a thing, so after ``nudge_after``
    looks the test changes node1's zone label and sets it back, each change waited for until every
    proxier has done a full sync after it (the fixture's topology hints make the zone matter: the node
    must end on a sync with node1's own zone). Until then the node is a real but passing state."""
    tables = "nft list tables | grep -E 'kube-proxy$' || true"
    rule = "Drop traffic to unallocated ClusterIPs"
    for attempt in range(tries):
        names = [" ".join(line.split()[1:3]) for line in in_node(cluster, tables).splitlines() if line.strip()]
        listings = [in_node(cluster, f"nft list chain {name} cluster-ips-check 2>/dev/null || true") for name in names]
        if names and all(rule in listing for listing in listings):
            return
        if attempt == nudge_after:
            zone_changed_and_back(cluster)
        time.sleep(2)
    raise AssertionError(f"kube-proxy's tables never dropped traffic to unallocated ClusterIPs: {names}")


def rendered(cluster, mode, **options):
    """kube_proxy_state's rendering of node1, for the kube-proxy version it reads from the cluster (the
    DaemonSet's image); ``node_ips`` its InternalIPs unless given ([]: read from the Node by the module)."""
    options.setdefault("node_ips", cluster.node_ips(NODE))
    state = cluster.module("kube_proxy_state", node_name=NODE, mode=mode, cluster_cidr="10.244.0.0/16",
                           masquerade_bit=14, **options)
    assert not state.get("failed"), state
    return state


def real_and_rendered(cluster, mode, dump, version, configure=None, **options):
    """The real kube-proxy ``version``'s node in ``mode`` (its ``dump``, once steady; its configuration
    passed through ``configure`` when given) and kube_proxy_state's rendering of the same node from
    the same cluster."""
    seed_cluster(cluster)
    # a fresh node: an earlier test's kube-proxy (another release) left its tables there, and
    # kube-proxy syncing over them keeps what it does not know and, before v1.36, the endpoint
    # chains it finds
    in_node(cluster, "nft flush ruleset")
    sysctls_reset(lambda command: in_node(cluster, command))
    real = start_kube_proxy(cluster, mode, dump, version, configure)
    state = rendered(cluster, mode, **options)
    assert state["kube_proxy_version"] == version, state["kube_proxy_version"]
    return real, state


def program(node, mode, state):
    """The node modules write ``state`` (kube_proxy_state's result) into ``node``, a NetNS."""
    if mode == "iptables":
        results = [node.module("iptables_chain", family=family, chains=chains)
                   for family, chains in state["iptables_chain"].items()]
        if state["sysctls"]:  # live only, as kube-proxy sets them (and the host's sysctl.d stays alone)
            results.append(node.module("sysctl", settings=state["sysctls"], persist=False))
    else:
        results = [node.module("nftables_table", family=table["family"], name=table["name"], content=table["content"])
                   for table in state["nftables_tables"]]
    for result in results:
        assert result["changed"] and not result.get("failed"), result


@pytest.mark.parametrize("version", KUBE_PROXY_VERSIONS)
def test_a_node_the_collection_programs_is_the_node_kube_proxy_programs(cluster, netns, version):
    real, state = real_and_rendered(cluster, "iptables", both_families, version)
    assert sorted(state["iptables_chain"]) == ["ipv4", "ipv6"], sorted(state["iptables_chain"])
    program(netns, "iptables", state)
    ours = both_families(netns.sh)

    assert len(real) > 100 and sum(" -j KUBE-SEP-" in line for line in real) >= 20, real
    assert any(line.startswith("ip6/nat ") and f"{HERE6}21" in line for line in real), real  # the IPv6 Services
    assert "sysctl net.ipv4.conf.all.route_localnet = 1" in real, real[-5:]  # localhost NodePorts, by default
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


def node_port_addresses_set(value):
    return lambda config: config.replace("nodePortAddresses: null", f"nodePortAddresses: {json.dumps(value)}")


def localhost_node_ports_off(config):
    return config.replace("iptables:\n", "iptables:\n  localhostNodePorts: false\n", 1)


# kube-proxy configured otherwise than by default, each case on one release the lab built (the
# keywords v1.37 added on the newest, when that is v1.37 or later): where iptables mode accepts
# NodePorts, and whether on 127.0.0.0/8 (the KUBE-FIREWALL rule, route_localnet).
CONFIG_CASES = [
    # "primary": the node's IPv4 and IPv6 address, no loopback - route_localnet left alone
    ("primary", lambda subnet: (["primary"], True), 0),
    # the node's IPv4 subnet and loopback, localhost NodePorts off: 127.0.0.1 skipped, IPv6 every address
    ("cidrs-no-localhost", lambda subnet: ([subnet, "127.0.0.0/8"], False), 1),
    # the same with localhost NodePorts: NodePorts on 127.0.0.1, route_localnet set
    ("cidrs-and-loopback", lambda subnet: ([subnet, "127.0.0.0/8"], True), 2),
    # v1.37's keywords, anywhere in the list: 127.0.0.0/8 and ::1/128 (skipped), and the node IPs
    ("keywords", lambda subnet: (["localhost", "primary"], True), -1),
]


@pytest.mark.parametrize("case, settings, release", CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_kube_proxy_configured_otherwise_is_the_node_the_collection_programs(cluster, netns, case, settings, release):
    releases = sorted(KUBE_PROXY_VERSIONS, key=parse_version)  # oldest first, -1 the newest
    version = releases[release % len(releases)]
    # the lab builds a release with the keywords; were it to stop, this case must say so, not pass
    assert case != "keywords" or parse_version(version)[:2] >= NODE_PORT_KEYWORDS_FROM, (
        f"the lab's newest kube-proxy, v{version}, predates the nodePortAddresses keywords")
    node_ports, localhost = settings(str(cluster.kube.subnet))

    def configure(config):
        config = node_port_addresses_set(node_ports)(config)
        return config if localhost else localhost_node_ports_off(config)

    # the node's addresses as the node modules' host lists them, lo's too
    real, state = real_and_rendered(cluster, "iptables", both_families, version, configure,
                                    node_port_cidrs=node_ports, localhost_node_ports=localhost,
                                    node_port_addresses=interface_addresses(cluster))
    program(netns, "iptables", state)
    ours = both_families(netns.sh)

    nodeport_rules = [line for line in real if line.endswith("-j KUBE-NODEPORTS") and "KUBE-SERVICES" in line]
    loopback = any(" -d 127.0.0.1/32 " in line for line in nodeport_rules)
    assert loopback == (case in ("cidrs-and-loopback", "keywords")), nodeport_rules
    assert any(f" -d {cluster.node_ip(NODE)}/32 " in line for line in nodeport_rules), nodeport_rules
    assert ("sysctl net.ipv4.conf.all.route_localnet = 1" in real) == loopback, real[-5:]
    assert state["sysctls"] == ({"net.ipv4.conf.all.route_localnet": 1} if loopback else {}), state["sysctls"]
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


# nftables mode with nodePortAddresses CIDRs (its default, "primary", is the tests' above), each on
# one release, with the nodeport-ips elements kube-proxy must write (a family without a set accepts
# NodePorts on every local address). nftables mode never serves NodePorts on loopback: an explicit
# 127.0.0.0/8 or ::1/128, or v1.37's "localhost", matches lo's address, which it skips.
NFT_CONFIG_CASES = [
    # the node's IPv4 subnet: IPv6 then on every address
    ("ipv4-subnet", lambda kube: [str(kube.subnet)], 0, lambda kube: {("ip", kube.node_ip(NODE))}),
    # every IPv4 address, and the node's IPv6 address alone
    ("ipv4-all-ipv6-node", lambda kube: ["0.0.0.0/0", f"{kube.node_ip6(NODE)}/128"], -1,
     lambda kube: {("ip6", kube.node_ip6(NODE))}),
    # the subnet and loopback: 127.0.0.1 is in a CIDR, and skipped
    ("ipv4-subnet-and-loopback", lambda kube: [str(kube.subnet), "127.0.0.0/8"], 1,
     lambda kube: {("ip", kube.node_ip(NODE))}),
    # loopback alone, in both families: both sets stay empty, no NodePort is served anywhere
    ("loopback-only", lambda kube: ["127.0.0.0/8", "::1/128"], 2, lambda kube: set()),
    # v1.37's keywords: "localhost" adds nothing, "primary" the node's address of each family
    ("keywords", lambda kube: ["localhost", "primary"], -1,
     lambda kube: {("ip", kube.node_ip(NODE)), ("ip6", kube.node_ip6(NODE))}),
]


@pytest.mark.parametrize("case, cidrs, release, elements", NFT_CONFIG_CASES, ids=[case[0] for case in NFT_CONFIG_CASES])
def test_nftables_kube_proxy_with_node_port_cidrs_is_the_node_the_collection_programs(
        cluster, netns, case, cidrs, release, elements):
    releases = sorted(KUBE_PROXY_VERSIONS, key=parse_version)  # oldest first, -1 the newest
    version = releases[release % len(releases)]
    assert case != "keywords" or parse_version(version)[:2] >= NODE_PORT_KEYWORDS_FROM, (
        f"the lab's newest kube-proxy, v{version}, predates the nodePortAddresses keywords")
    node_ports = cidrs(cluster.kube)
    held = interface_addresses(cluster)
    assert "127.0.0.1" in held and cluster.node_ip(NODE) in held, held
    # the node's addresses as the node modules' host lists them, loopback ones too: kube-proxy skips those
    real, state = real_and_rendered(cluster, "nftables", nft_dump, version, node_port_addresses_set(node_ports),
                                    ip_families=["ipv4", "ipv6"], node_port_cidrs=node_ports, node_port_addresses=held)
    program(netns, "nftables", state)
    ours = nft_dump(netns.sh)

    written = {(line.split()[0], line.split(" element ")[1]) for line in real if "set nodeport-ips element" in line}
    assert written == elements(cluster.kube), written
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


def feature_gates(gates):
    """kube-proxy's configuration with ``gates`` (name -> bool) as its featureGates."""
    text = "featureGates:\n" + "".join(f"  {name}: {str(flag).lower()}\n" for name, flag in gates.items())
    return lambda config: config.replace("kind: KubeProxyConfiguration\n", text + "kind: KubeProxyConfiguration\n", 1)


# Feature gates that change what kube-proxy programs, each where it may be set: external IPs left
# out (v1.36 and later), node hints ignored (v1.34 alone; zone hints then decide).
GATE_CASES = [
    ("no-external-ips", {"AllowServiceExternalIPs": False}, (1, 36)),
    ("no-node-hints", {"PreferSameTrafficDistribution": False}, (1, 34)),
]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize("case, gates, release", GATE_CASES, ids=[case[0] for case in GATE_CASES])
def test_kube_proxy_with_feature_gates_is_the_node_the_collection_programs(cluster, netns, case, gates, release, mode):
    version = next((v for v in sorted(KUBE_PROXY_VERSIONS, key=parse_version) if parse_version(v)[:2] == release), None)
    assert version, f"the lab builds no kube-proxy v{'.'.join(map(str, release))}, which case {case} needs"
    dump = both_families if mode == "iptables" else nft_dump
    real, state = real_and_rendered(cluster, mode, dump, version, feature_gates(gates),
                                    **({"ip_families": ["ipv4", "ipv6"]} if mode == "nftables" else {}),
                                    feature_gates=gates)
    program(netns, mode, state)
    ours = dump(netns.sh)
    text = "\n".join(real)
    if case == "no-external-ips":
        assert "198.51.100.7" not in text and "2001:db8:7::7" not in text, "kube-proxy programmed the external IPs"
    else:  # same-node's endpoints: node hints ignored, the zone's two serve node1
        assert "10.244.3.33" in text, "kube-proxy heeded the node hints"
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


def masquerade_all(mode):
    """masqueradeAll on, in the section kube-proxy reads it from in ``mode`` (kubeadm's configuration
    has no nftables section)."""
    if mode == "nftables":
        return lambda config: config.replace("kind: KubeProxyConfiguration\n",
                                             "kind: KubeProxyConfiguration\nnftables:\n  masqueradeAll: true\n", 1)
    return lambda config: config.replace("  masqueradeAll: false\n", "  masqueradeAll: true\n", 1)


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_masquerading_all_service_traffic_is_the_node_the_collection_programs(cluster, netns, mode):
    """masqueradeAll (the newest release): every packet to a ClusterIP is marked for masquerading, not
    only what comes from outside the cluster CIDR; the role passes the ConfigMap's value per mode."""
    version = max(KUBE_PROXY_VERSIONS, key=parse_version)
    real, state = real_and_rendered(cluster, mode, DUMPS[mode], version, masquerade_all(mode),
                                    ip_families=["ipv4", "ipv6"], masquerade_all=True)
    program(netns, mode, state)
    ours = DUMPS[mode](netns.sh)

    # kube-proxy took the setting: ClusterIP traffic marked whatever its source (nftables mode from
    # v1.37 in one rule over all ClusterIPs, before in each Service's chain)
    marks = [line for line in real if ("cluster IP" in line and line.endswith("-j KUBE-MARK-MASQ"))
             or ("daddr" in line and line.endswith("jump mark-for-masquerade"))
             or "masquerade all clusterIP traffic" in line]
    assert marks and not [line for line in marks if " ! -s " in line or "saddr !=" in line], marks[:10]
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


def nft_dump(run):
    """kube-proxy's ``kube-proxy`` tables of ``nft list ruleset``, one line per fact: each set, map
    and chain (in name order; nft lists them in creation order, kube-proxy's follows Go map order)
    with its declaration and rules in their order, and its elements sorted (one line each)."""
    lines, table, block, elements = [], None, None, None
    for raw in run("nft list ruleset").splitlines():
        line = raw.strip()
        if elements is None and table and line.startswith("elements = {"):
            elements = ""
        if elements is not None:  # inside ``elements = { ... }``, which may span lines
            elements += " " + line
            if line.endswith("}"):
                items = split_top_level(elements[elements.index("{") + 1:elements.rindex("}")])
                lines.extend(f"{table} {block} element {item}" for item in items)
                elements = None
        elif line.startswith("table "):  # only kube-proxy's (iptables-nft keeps its tables in nft too)
            table = " ".join(line.split()[1:3]) if line.split()[2] == "kube-proxy" else None
            block = "table"
        elif not table or not line or line == "}":
            continue
        elif line.split()[0] in ("set", "map", "chain") and line.endswith("{"):
            block = " ".join(line.split()[:2])
        else:
            lines.append(f"{table} {block} {line}")
    index = {line: position for position, line in enumerate(lines)}
    # blocks in name order, each block's lines in their order (elements sorted among themselves)
    return sorted(lines, key=lambda line: (line.split(" ", 4)[:4], " element " in line,
                                           line if " element " in line else index[line])) + sysctl_lines(run)


def split_top_level(text):
    """``a, b { c, d }, e`` -> [a, b { c, d }, e]: the elements of a set, commas inside braces kept."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [item for item in items + [current.strip()] if item]


@pytest.mark.parametrize("version", KUBE_PROXY_VERSIONS)
def test_an_nftables_node_the_collection_programs_is_the_node_kube_proxy_programs(cluster, netns, version):
    # kube-proxy runs an IPv6 proxier too (the namespace's kernel has IPv6): ip_families lists both
    real, state = real_and_rendered(cluster, "nftables", nft_dump, version, ip_families=["ipv4", "ipv6"])
    assert [table["family"] for table in state["nftables_tables"]] == ["ip", "ip6"], state["nftables_tables"]
    program(netns, "nftables", state)
    ours = nft_dump(netns.sh)

    assert sum(" dnat " in line for line in real) >= 10, real
    assert any(line.startswith("ip6 ") and f"{HERE6}21" in line for line in real), real  # the IPv6 Services
    assert any("Drop traffic to unallocated ClusterIPs" in line for line in real), real
    # NodePorts on the node's own IPv6 address (its primary one), the IPv6 NodePort Services' way in
    assert any(line.startswith("ip6 ") and f"element {cluster.node_ips(NODE)[1]}" in line for line in real), real
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


DUMPS = {"iptables": both_families, "nftables": nft_dump}


@pytest.mark.parametrize("version", KUBE_PROXY_VERSIONS)
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_a_node_whose_ipv6_is_off_is_the_node_kube_proxy_programs(cluster, netns, tmp_path, mode, version):
    """node1 with IPv6 switched off (``net.ipv6.conf.all.disable_ipv6=1`` in its namespace) in this
    dual-stack cluster, its Node still listing an IPv4 and an IPv6 InternalIP: kube-proxy from v1.36
    runs IPv4 alone there, older releases both families. The collection takes the families as the
    mode_switch role does - dataplane_facts on the node, then the catalogue's rule for the release -
    and kube_proxy_state the node IPs from the Node, the addresses the node holds from dataplane_facts;
    the node it programs must be kube-proxy's."""
    node = NetNS(cluster.kube.namespaces[NODE], tmp_path)
    node.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    try:
        facts = node.module("dataplane_facts")
        assert facts["dataplane"]["ipv6"] == {"kernel": True, "disabled": True}, facts["dataplane"]["ipv6"]
        families = proxier_families(facts["dataplane"]["ipv6"], parse_version(version))
        real, state = real_and_rendered(cluster, mode, DUMPS[mode], version, ip_families=families, node_ips=[],
                                        node_port_addresses=facts["dataplane"]["node_port_addresses"])
    finally:
        node.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0")
        node.sh(f"ip addr replace {cluster.kube.node_ip6(NODE)}/64 dev eth0 nodad")
    program(netns, mode, state)
    ours = DUMPS[mode](netns.sh)

    ipv6_lines = [line for line in real if line.startswith(("ip6/", "ip6 "))]
    if parse_version(version)[:2] >= IPV6_OFF_TESTED_FROM:
        assert families == ["ipv4"] and state["node_ips"] == [cluster.node_ip(NODE)], (families, state["node_ips"])
        assert not ipv6_lines, ipv6_lines[:20]  # kube-proxy ran no IPv6 proxier
    else:
        assert families == ["ipv4", "ipv6"] and state["node_ips"] == cluster.node_ips(NODE), (families, state)
        assert any(f"{HERE6}21" in line for line in ipv6_lines), ipv6_lines[:20]  # it still did
    assert any(f"{HERE}.10" in line for line in real), real[:20]
    diff = differences(real, ours)
    assert not diff, "\n".join(diff[:80]) + "\n" + json.dumps(state["counts"])


# What kube-proxy's first sync may delete from the sets and maps of a table it finds (nftables
# mode): it flushes and refills ``nodeport-ips``; every other element it keeps.
REFILLED_SETS = {"nodeport-ips"}


@pytest.mark.parametrize("version", KUBE_PROXY_VERSIONS)
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_started_on_a_node_the_collection_programmed_changes_nothing(cluster, tmp_path, mode, version):
    """The handover: the collection programs node1 (both families) before kube-proxy runs there;
    kube-proxy's first syncs then leave the same rules, chains, sets and elements (its own
    KNOWN_DIFFERENCES aside), and in nftables mode delete no element the Services are dispatched
    through. ``nft monitor`` records what it wrote meanwhile (iptables is iptables-nft here)."""
    node = NetNS(cluster.kube.namespaces[NODE], tmp_path)
    seed_cluster(cluster)
    node.sh("nft flush ruleset")  # what earlier tests' kube-proxies left on this lab node
    sysctls_reset(node.sh)
    seed_kubeadm_kube_proxy(cluster, run=False, image=KUBE_PROXY_IMAGES[version])  # the version to render for
    program(node, mode, rendered(cluster, mode, ip_families=["ipv4", "ipv6"]))
    before = DUMPS[mode](node.sh)

    events_file = tmp_path / "nft-monitor"
    with events_file.open("w") as out:
        monitor = node.popen("exec nft monitor", stdout=out, stderr=subprocess.DEVNULL)

        def stop():
            if monitor.poll() is None:
                monitor.terminate()
            monitor.wait()

        try:
            time.sleep(0.5)  # listening before kube-proxy starts
            # what kube-proxy's start wrote, up to its first sync: the zone change the test makes then
            # (zone_announced) widens and narrows the zone-hinted Services, which is no handover's doing
            after = start_kube_proxy(cluster, mode, DUMPS[mode], version, synced=stop)
        finally:
            stop()
    events = events_file.read_text().splitlines()

    assert len(before) > 100, before
    diff = differences(after, before)
    assert not diff, "\n".join(diff[:80])
    assert any(event.startswith("add rule ") for event in events), events  # kube-proxy did sync over it
    deleted = {event.split()[4] for event in events if event.startswith("delete element ")}
    assert deleted <= REFILLED_SETS, sorted(deleted)
