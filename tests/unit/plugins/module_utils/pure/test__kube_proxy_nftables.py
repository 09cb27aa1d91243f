# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Services + EndpointSlices -> the kube-proxy nftables table of node1 (node IP 192.0.2.11).

Chain names are checked against the hash formula computed here and against names that appear in
kube-proxy's own nftables test data (pkg/proxy/nftables/proxier_test.go)."""

from __future__ import annotations

import base64
import hashlib
import random
import re

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_nftables import (
    hash_and_truncate,
    nftables_state,
    nftables_table,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import Cluster
from ansible_collections.kubeipvs.node.tests.unit.plugins.module_utils.pure.test__kube_proxy_state import (
    endpoint_slice,
    ep,
    port,
    service,
)

NODE = "node1"
NODE_IPS = ["192.0.2.11"]


def chain_hash(text):
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]


def parse(content):
    """{"chains": {name: [rules]}, "sets": {name: [lines]}} from the rendered table body."""
    chains, sets, current, bucket = {}, {}, None, None
    for line in content.splitlines():
        header = re.match(r"^\t(chain|set|map) (\S+) \{$", line)
        if header:
            current = header.group(2)
            bucket = chains if header.group(1) == "chain" else sets
            bucket[current] = []
        elif line == "\t}":
            current = None
        elif current is not None:
            bucket[current].append(line.strip())
    return {"chains": chains, "sets": sets}


def elements(content, name):
    """The elements of one set or map, as 'key : value' strings (comments dropped)."""
    lines = parse(content)["sets"][name]
    text = " ".join(lines)
    found = re.search(r"elements = \{ (.*) \}", text)
    if not found:
        return []
    items = [item.strip() for item in found.group(1).split(",")]
    return [re.sub(r' comment "[^"]*"', "", item) for item in items]


def table(services, slices, family=IPV4, node_ips=None, **options):
    node_ips = NODE_IPS if node_ips is None else node_ips
    ports = Cluster(services, slices).service_ports(NODE, family)
    return nftables_table(ports, family, node_ips, **options)["content"]


def web_slice(endpoints, name="web", ports=(("http", 8080, "TCP"),), **kwargs):
    return endpoint_slice(name, endpoints, list(ports), **kwargs)


WEB = service("web", ["10.96.0.10"], [port(80, name="http")])
TWO = [ep("10.244.1.5", "node1"), ep("10.244.2.6", "node2")]


def test_hash_formula_and_upstream_names():
    assert hash_and_truncate("ns1/svc1/tcp/p80") == f"{chain_hash('ns1/svc1/tcp/p80')}-ns1/svc1/tcp/p80"
    # Names from kube-proxy's nftables proxier tests.
    svc1 = service("svc1", ["172.30.0.41"], [port(80, name="p80")], namespace="ns1")
    svc2 = service("svc2", ["172.30.0.42"], [port(80, name="p80", node_port=3001)], service_type="NodePort",
                   namespace="ns2")
    slices = [endpoint_slice("svc1", [ep("10.180.0.1", "node2")], [("p80", 80, "TCP")], namespace="ns1"),
              endpoint_slice("svc2", [ep("10.180.0.2", "node2")], [("p80", 80, "TCP")], namespace="ns2")]
    chains = parse(table([svc1, svc2], slices))["chains"]
    for name in ("service-ULMVA6XW-ns1/svc1/tcp/p80", "service-42NFTM6N-ns2/svc2/tcp/p80",
                 "external-42NFTM6N-ns2/svc2/tcp/p80"):
        assert name in chains, sorted(chains)
    # one endpoint: a plain DNAT in the service chain, no endpoint chain (those serve session affinity)
    assert chains["service-ULMVA6XW-ns1/svc1/tcp/p80"] == ["meta l4proto tcp dnat to 10.180.0.1:80"]
    assert not [name for name in chains if name.startswith("endpoint-")]
    affine = service("svc1", ["172.30.0.41"], [port(80, name="p80")], namespace="ns1", sessionAffinity="ClientIP")
    chains = parse(table([affine, svc2], slices))["chains"]
    assert chains["endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"] == [
        "update @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { ip saddr }",
        "meta l4proto tcp dnat to 10.180.0.1:80"]
    assert "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80" not in chains


def test_ipv6_endpoint_chain_names_match_upstream():
    svc1 = service("svc1", ["fd00:10:96::1"], [port(80, name="p80")], namespace="ns1", sessionAffinity="ClientIP")
    slices = [endpoint_slice("svc1", [ep("fd00:10:180::1", "node2"), ep("fd00:10:180::2:1", "node2")],
                             [("p80", 80, "TCP")], address_type="IPv6", namespace="ns1")]
    chains = parse(table([svc1], slices, family=IPV6, node_ips=["2001:db8::11"]))["chains"]
    assert chains["endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80"] == [
        "update @affinity-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80 { ip6 saddr }",
        "meta l4proto tcp dnat to [fd00:10:180::1]:80"]
    assert "endpoint-2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80" in chains
    plain = service("svc1", ["fd00:10:96::1"], [port(80, name="p80")], namespace="ns1")
    rules = parse(table([plain], slices, family=IPV6, node_ips=["2001:db8::11"]))["chains"]
    assert rules[f"service-{chain_hash('ns1/svc1/tcp/p80')}-ns1/svc1/tcp/p80"] == [
        "meta l4proto tcp dnat ip6 addr . port to numgen random mod 2 map "
        "{ 0 : fd00:10:180::1 . 80, 1 : fd00:10:180::2:1 . 80 }"]


def test_unnamed_port_and_long_names_follow_the_formula():
    unnamed = service("api", ["10.96.0.1"], [port(443)])
    chains = parse(table([unnamed], [endpoint_slice("api", [ep("192.0.2.50", "node2")], [("", 6443, "TCP")])]))
    assert f"service-{chain_hash('default/api/tcp/')}-default/api/tcp/" in chains["chains"]
    long_name = "x" * 300
    truncated = hash_and_truncate(long_name)
    assert len(truncated) == 240 and truncated.endswith("...") and truncated.startswith(chain_hash(long_name))


def test_endpoints_are_chosen_with_numgen_in_a_stable_order():
    three = [ep("10.244.3.7", "node3"), *TWO]
    content = table([WEB], [web_slice(three)])
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    rules = parse(content)["chains"][f"service-{base}"]
    assert rules == ["meta l4proto tcp dnat ip addr . port to numgen random mod 3 map "
                     "{ 0 : 10.244.1.5 . 8080, 1 : 10.244.2.6 . 8080, 2 : 10.244.3.7 . 8080 }"]
    assert elements(content, "service-ips") == [f"10.96.0.10 . tcp . 80 : goto service-{base}"]
    assert elements(content, "cluster-ips") == ["10.96.0.10"]
    shuffled = list(three)
    random.Random(7).shuffle(shuffled)
    other = service("other", ["10.96.0.11"], [port(80, name="http")])
    assert table([WEB, other], [web_slice(three)]) == table([other, WEB], [web_slice(shuffled)])


def test_not_ready_endpoints_are_left_out_and_terminating_ones_used_only_when_nothing_is_ready():
    content = table([WEB], [web_slice([ep("10.244.1.5", "node1"), ep("10.244.2.6", "node2", ready=False)])])
    assert "dnat to 10.244.1.5:8080" in content and "10.244.2.6" not in content
    terminating = [ep("10.244.2.6", "node2", ready=False, serving=True, terminating=True)]
    assert "dnat to 10.244.2.6:8080" in table([WEB], [web_slice(terminating)])


def test_no_endpoints_rejects_through_the_no_endpoint_maps():
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="NodePort")
    content = table([svc], [])
    assert elements(content, "no-endpoint-services") == ["10.96.0.10 . tcp . 80 : goto reject-chain"]
    assert elements(content, "no-endpoint-nodeports") == ["tcp . 30080 : goto reject-chain"]
    assert elements(content, "service-ips") == [] and elements(content, "service-nodeports") == []
    assert 'comment "default/web:http"' in content
    assert not [name for name in parse(content)["chains"] if "/" in name]
    assert elements(content, "cluster-ips") == ["10.96.0.10"]  # the cluster-ips-check reject still knows it
    assert parse(content)["chains"]["reject-chain"] == [
        'comment "helper for @no-endpoint-services / @no-endpoint-nodeports"', "reject"]


def test_nodeports_listen_on_the_node_ips_or_on_every_local_address():
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="NodePort")
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    primary = table([svc], [web_slice(TWO)], node_ips=["192.0.2.11", "127.0.0.1", "2001:db8::1"])
    assert elements(primary, "nodeport-ips") == ["192.0.2.11"]
    assert elements(primary, "service-nodeports") == [f"tcp . 30080 : goto external-{base}"]
    chains = parse(primary)["chains"]
    assert chains["services"] == ["ip daddr . meta l4proto . th dport vmap @service-ips",
                                  "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
    assert chains[f"external-{base}"] == ['mark set mark or 0x4000 comment "masquerade"', f"goto service-{base}"]
    # "primary" is the first address of the family only, as kube-proxy's --nodeport-addresses primary
    assert elements(table([svc], [web_slice(TWO)], node_ips=["192.0.2.11", "192.0.2.12"]), "nodeport-ips") == [
        "192.0.2.11"]

    everywhere = table([svc], [web_slice(TWO)], nodeport_addresses="all")
    assert "nodeport-ips" not in parse(everywhere)["sets"]
    assert parse(everywhere)["chains"]["services"][1] == (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports")
    assert parse(everywhere)["chains"]["nodeport-endpoints-check"] == [
        "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"]
    # a family the node has no address of listens everywhere (kube-proxy's zero CIDR)
    assert parse(table([svc], [web_slice(TWO)], node_ips=["2001:db8::1"]))["chains"]["services"][1].startswith(
        "fib daddr type local ")

    # kube-proxy lists the node's interfaces for its node IP: one no interface holds (IPv6 switched off
    # while the Node lists an IPv6 InternalIP) is no element - the set stays, empty
    held = table([svc], [web_slice(TWO)], node_ips=["192.0.2.11"], node_addresses=["10.0.0.5", "192.0.2.11"])
    assert elements(held, "nodeport-ips") == ["192.0.2.11"]
    missing = table([svc], [web_slice(TWO)], node_ips=["192.0.2.11"], node_addresses=["10.0.0.5"])
    assert "nodeport-ips" in parse(missing)["sets"] and elements(missing, "nodeport-ips") == []
    assert parse(missing)["chains"]["services"] == chains["services"]
    six = table([svc], [web_slice(TWO)], family=IPV6, node_ips=["192.0.2.11", "2001:db8::1"],
                node_addresses=["192.0.2.11"])
    assert elements(six, "nodeport-ips") == []


def test_nodeports_on_the_node_addresses_in_the_node_port_cidrs():
    """nodePortAddresses CIDRs of the family: the node's addresses in them, never a loopback one, in
    nodeport-ips (a set that stays, empty, when none is in them); "all" where the family has none."""
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="NodePort")
    addresses = ["192.0.2.11", "192.0.2.12", "198.51.100.5", "127.0.0.1", "2001:db8::1"]
    cidrs = table([svc], [web_slice(TWO)], nodeport_addresses=["192.0.2.0/24", "127.0.0.0/8"],
                  node_addresses=addresses)
    assert elements(cidrs, "nodeport-ips") == ["192.0.2.11", "192.0.2.12"]
    assert parse(cidrs)["chains"]["services"][1] == "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    # without the node's addresses, the node IPs
    assert elements(table([svc], [web_slice(TWO)], node_ips=["192.0.2.11", "198.51.100.5"],
                          nodeport_addresses=["198.51.100.0/24"]), "nodeport-ips") == ["198.51.100.5"]
    none = table([svc], [web_slice(TWO)], nodeport_addresses=["203.0.113.0/24"], node_addresses=addresses)
    assert "nodeport-ips" in parse(none)["sets"] and elements(none, "nodeport-ips") == []
    with pytest.raises(ValueError, match="are not IPv4 CIDRs"):
        table([svc], [web_slice(TWO)], nodeport_addresses=["2001:db8::/64"])

    state = nftables_state([svc], [web_slice(TWO)], NODE, ["192.0.2.11", "2001:db8::1"], families=["ipv4", "ipv6"],
                           node_port_cidrs=["192.0.2.11/32"], service_cidrs=["10.96.0.0/16"])
    assert elements(state["ipv4"]["content"], "nodeport-ips") == ["192.0.2.11"]
    assert "nodeport-ips" not in parse(state["ipv6"]["content"])["sets"]  # no IPv6 CIDR: every address


def test_external_policy_local():
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="LoadBalancer",
                  externalTrafficPolicy="Local", status=[{"ip": "198.51.100.10"}])
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    content = table([svc], [web_slice(TWO)], cluster_cidr="10.244.0.0/16")
    chains = parse(content)["chains"]
    assert chains[f"external-{base}"] == [
        f'ip saddr 10.244.0.0/16 goto service-{base} comment "short-circuit pod traffic"',
        'fib saddr type local mark set mark or 0x4000 comment "masquerade local traffic"',
        f'fib saddr type local goto service-{base} comment "short-circuit local traffic"',
        f"goto local-{base}"]
    assert chains[f"local-{base}"] == ["meta l4proto tcp dnat to 10.244.1.5:8080"]
    assert "numgen random mod 2" in chains[f"service-{base}"][-1]  # ClusterIP traffic stays cluster-wide
    assert f"198.51.100.10 . tcp . 80 : goto external-{base}" in elements(content, "service-ips")

    # No local endpoint: external traffic from outside is dropped, no fall-back to other nodes'
    # endpoints (unlike IPVS mode); the short-circuit rules still serve pods and the node itself.
    remote_only = table([svc], [web_slice([ep("10.244.2.6", "node2")])], cluster_cidr="10.244.0.0/16")
    assert elements(remote_only, "no-endpoint-services") == ["198.51.100.10 . tcp . 80 : drop"]
    assert elements(remote_only, "no-endpoint-nodeports") == ["tcp . 30080 : drop"]
    chains = parse(remote_only)["chains"]
    assert f"local-{base}" not in chains and chains[f"external-{base}"][-1].startswith("fib saddr type local goto")
    assert elements(remote_only, "service-nodeports") == [f"tcp . 30080 : goto external-{base}"]


def test_internal_policy_local_without_local_endpoints_drops_cluster_ip_traffic():
    svc = service("web", ["10.96.0.10"], [port(80, name="http")], internalTrafficPolicy="Local")
    content = table([svc], [web_slice([ep("10.244.2.6", "node2")])])
    assert elements(content, "no-endpoint-services") == ["10.96.0.10 . tcp . 80 : drop"]
    assert elements(content, "service-ips") == []
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    with_local = table([svc], [web_slice(TWO)])
    assert elements(with_local, "service-ips") == [f"10.96.0.10 . tcp . 80 : goto local-{base}"]
    assert f"service-{base}" not in parse(with_local)["chains"]


def test_masquerading_mark_and_cluster_cidr_rules():
    content = table([WEB], [web_slice(TWO)], cluster_cidr=["fd00::/64", "10.244.0.0/16"])
    chains = parse(content)["chains"]
    assert "mark-for-masquerade" not in chains
    assert chains["masquerading"] == [
        "mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade fully-random",
        "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random"]
    assert chains["services"][0] == ('ip daddr @cluster-ips ip saddr != 10.244.0.0/16 mark set mark or 0x4000 '
                                     'comment "masquerade clusterIP traffic from outside cluster"')
    # a local endpoint reaching its own Service (hairpin) is masqueraded through the set
    assert elements(content, "hairpin-connections") == ["10.244.1.5 . 10.244.1.5 . tcp . 8080"]
    assert parse(content)["sets"]["hairpin-connections"][0] == (
        "type ipv4_addr . ipv4_addr . inet_proto . inet_service")
    assert parse(table([WEB], [web_slice(TWO)], masquerade_bit=0))["chains"]["masquerading"][0] == (
        "mark and 0x1 != 0 mark set mark xor 0x1 masquerade fully-random")
    everything = parse(table([WEB], [web_slice(TWO)], masquerade_all=True))["chains"]["services"][0]
    assert everything == 'ip daddr @cluster-ips mark set mark or 0x4000 comment "masquerade all clusterIP traffic"'
    no_detector = parse(table([WEB], [web_slice(TWO)]))["chains"]["services"]
    assert no_detector == ["ip daddr . meta l4proto . th dport vmap @service-ips",
                           "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]


def test_base_chains_and_jumps():
    chains = parse(table([], [], service_cidrs="10.96.0.0/12,fd00:10:96::/112"))["chains"]
    assert chains["nat-prerouting"] == ["type nat hook prerouting priority dstnat; policy accept;", "jump services"]
    assert chains["nat-output"] == ["type nat hook output priority -100; policy accept;", "jump services"]
    assert chains["nat-postrouting"] == [
        "type nat hook postrouting priority srcnat; policy accept;", "jump masquerading"]
    assert chains["filter-input"][1:] == ["ct state new jump nodeport-endpoints-check",
                                          "ct state new jump service-endpoints-check"]
    assert chains["filter-output"] == ["type filter hook output priority filter; policy accept;",
                                       "ct state new jump service-endpoints-check",
                                       "ct state new jump cluster-ips-check"]
    assert chains["filter-prerouting-pre-dnat"] == [
        "type filter hook prerouting priority dstnat - 10; policy accept;", "ct state new jump firewall-check"]
    assert chains["filter-output-pre-dnat"] == [
        "type filter hook output priority -110; policy accept;", "ct state new jump firewall-check"]
    assert chains["cluster-ips-check"] == [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'ip daddr { 10.96.0.0/12 } drop comment "Drop traffic to unallocated ClusterIPs"']


def test_session_affinity_sets():
    svc = service("web", ["10.96.0.10"], [port(80, name="http")], sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    content = table([svc], [web_slice(TWO)])
    parsed = parse(content)
    endpoint = f"{chain_hash('default/web/tcp/http__10.244.1.5/8080')}-default/web/tcp/http__10.244.1.5/8080"
    assert parsed["sets"][f"affinity-{endpoint}"] == ["type ipv4_addr", "flags dynamic,timeout", "timeout 600s"]
    assert parsed["chains"][f"endpoint-{endpoint}"][0] == f"update @affinity-{endpoint} {{ ip saddr }}"
    service_chain = parsed["chains"][f"service-{chain_hash('default/web/tcp/http')}-default/web/tcp/http"]
    assert service_chain[0] == f"ip saddr @affinity-{endpoint} goto endpoint-{endpoint}"
    assert service_chain[-1].startswith("numgen random mod 2")


def test_load_balancer_source_ranges_firewall():
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="LoadBalancer",
                  loadBalancerSourceRanges=["192.0.2.0/24", "203.0.113.0/24"], status=[{"ip": "198.51.100.10"}])
    content = table([svc], [web_slice(TWO)])
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    assert elements(content, "firewall-ips") == [f"198.51.100.10 . tcp . 80 : goto firewall-{base}"]
    # The node IP 192.0.2.11 is inside a range: the LB VIP is allowed as a source too.
    assert parse(content)["chains"][f"firewall-{base}"] == [
        "ip saddr != { 192.0.2.0/24, 203.0.113.0/24, 198.51.100.10 } drop"]


def test_dual_stack_state_renders_both_families():
    svc = service("web", ["10.96.0.10", "fd00:10:96::10"], [port(80, name="http", node_port=30080)],
                  service_type="NodePort")
    slices = [web_slice(TWO), web_slice([ep("fd00:10:244::5", "node1")], address_type="IPv6")]
    state = nftables_state([svc], slices, NODE, ["192.0.2.11", "2001:db8::11"])
    assert sorted(state) == ["ipv4", "ipv6"]
    assert (state["ipv4"]["family"], state["ipv6"]["family"]) == ("ip", "ip6")
    assert state["ipv4"]["name"] == state["ipv6"]["name"] == "kube-proxy"
    v6 = state["ipv6"]["content"]
    assert elements(v6, "cluster-ips") == ["fd00:10:96::10"] and elements(v6, "nodeport-ips") == ["2001:db8::11"]
    assert "dnat to [fd00:10:244::5]:8080" in v6 and "type ipv6_addr . inet_proto . inet_service : verdict" in v6
    assert "10.96.0.10" not in v6 and "fd00" not in state["ipv4"]["content"]
    assert list(nftables_state([WEB], [], NODE, NODE_IPS)) == ["ipv4"]
    # kube-proxy on a kernel with IPv6 also runs an IPv6 proxier: families lists both, its table is empty
    both = nftables_state([WEB], [], NODE, NODE_IPS, families=["ipv4", "ipv6"])
    assert list(both) == ["ipv4", "ipv6"] and not elements(both["ipv6"]["content"], "cluster-ips")
    assert "nodeport-ips" not in parse(both["ipv6"]["content"])["sets"]  # no IPv6 node address: every address
    with pytest.raises(ValueError, match="ip_families"):
        nftables_state([WEB], [], NODE, NODE_IPS, families=["ipx"])


def test_first_service_keeps_a_shared_vip_port():
    first = service("a", ["10.96.0.10"], [port(80, name="http")], externalIPs=["198.51.100.7"])
    second = service("b", ["10.96.0.11"], [port(80, name="http")], externalIPs=["198.51.100.7"])
    slices = [web_slice(TWO, name="a"), web_slice(TWO, name="b")]
    keys = [item.split(" : ")[0] for item in elements(table([first, second], slices), "service-ips")]
    assert keys.count("198.51.100.7 . tcp . 80") == 1


@pytest.mark.parametrize("options, message", [
    ({"masquerade_bit": 32}, "masquerade_bit"),
    ({"cluster_cidr": "10.244.0.0/33"}, "cluster_cidr"),
    ({"service_cidrs": ["nonsense"]}, "service_cidrs"),
    ({"nodeport_addresses": "some"}, "nodeport_addresses"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        nftables_state([WEB], [], NODE, NODE_IPS, **options)


def test_bad_node_ip():
    with pytest.raises(ValueError, match="node_ips"):
        nftables_state([WEB], [], NODE, ["192.0.2.300"])
    with pytest.raises(ValueError, match="node_port_addresses: fe80::1%eth0 is not an IP address"):
        nftables_state([WEB], [], NODE, NODE_IPS, node_addresses=["192.0.2.11", "fe80::1%eth0"])


# --- releases: what v1.34-v1.36 write differently (each proven against its binary in
# tests/integration/test_parity_netns.py) ----------------------------------------------------------

def test_a_single_endpoint_is_a_plain_dnat_only_since_v1_37():
    one = [ep("10.244.2.6", "node2")]
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    latest = parse(table([WEB], [web_slice(one)]))["chains"][f"service-{base}"]
    assert latest == ["meta l4proto tcp dnat to 10.244.2.6:8080"]
    older = parse(table([WEB], [web_slice(one)], version=(1, 36)))["chains"][f"service-{base}"]
    assert older == ["meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.244.2.6 . 8080 }"]
    six = service("six", ["fd00:10:96::10"], [port(80, name="http")], ipFamilies=["IPv6"])
    six_slice = web_slice([ep("fd00:10:244:2::6", "node2")], name="six", address_type="IPv6")
    six_chain = f"service-{chain_hash('default/six/tcp/http')}-default/six/tcp/http"
    assert parse(table([six], [six_slice], family=IPV6, node_ips=["fd00::11"]))["chains"][six_chain] == [
        "meta l4proto tcp dnat to [fd00:10:244:2::6]:8080"]


def test_before_v1_36_every_endpoint_has_a_chain_and_traffic_is_marked_by_a_jump():
    content = table([WEB], [web_slice(TWO)], cluster_cidr="10.244.0.0/16", version=(1, 35))
    parsed = parse(content)
    chains = parsed["chains"]
    assert chains["mark-for-masquerade"] == ["mark set mark or 0x4000"]
    assert chains["masquerading"] == ["mark and 0x4000 == 0 return", "mark set mark xor 0x4000",
                                      "masquerade fully-random"]
    assert "hairpin-connections" not in parsed["sets"]
    # no masquerade rule in services: the Service's own chain marks off-cluster traffic first
    assert chains["services"] == ["ip daddr . meta l4proto . th dport vmap @service-ips",
                                  "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
    base = f"{chain_hash('default/web/tcp/http')}-default/web/tcp/http"
    endpoints = [f"{chain_hash(f'default/web/tcp/http__{address}/8080')}-default/web/tcp/http__{address}/8080"
                 for address in ("10.244.1.5", "10.244.2.6")]
    assert chains[f"service-{base}"] == [
        "ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        f"numgen random mod 2 vmap {{ 0 : goto endpoint-{endpoints[0]}, 1 : goto endpoint-{endpoints[1]} }}"]
    # every endpoint (local or not) masquerades traffic from itself: the hairpin case
    assert chains[f"endpoint-{endpoints[1]}"] == ["ip saddr 10.244.2.6 jump mark-for-masquerade",
                                                  "meta l4proto tcp dnat to 10.244.2.6:8080"]
    everything = parse(table([WEB], [web_slice(TWO)], masquerade_all=True, version=(1, 34)))["chains"]
    assert everything[f"service-{base}"][0] == "ip daddr 10.96.0.10 jump mark-for-masquerade"
    assert everything["services"][0] == "ip daddr . meta l4proto . th dport vmap @service-ips"


def test_before_v1_36_external_chains_and_affinity_jump_to_the_mark_chain():
    svc = service("web", ["10.96.0.10"], [port(80, name="http", node_port=30080)], service_type="NodePort",
                  sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    local = service("local", ["10.96.0.11"], [port(80, name="http", node_port=30081)], service_type="NodePort",
                    externalTrafficPolicy="Local")
    content = table([svc, local], [web_slice(TWO), web_slice(TWO, name="local")], version=(1, 35))
    chains = parse(content)["chains"]
    assert chains[f"external-{chain_hash('default/web/tcp/http')}-default/web/tcp/http"][0] == (
        "jump mark-for-masquerade")
    assert 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"' in chains[
        f"external-{chain_hash('default/local/tcp/http')}-default/local/tcp/http"]
    endpoint = f"{chain_hash('default/web/tcp/http__10.244.1.5/8080')}-default/web/tcp/http__10.244.1.5/8080"
    assert chains[f"endpoint-{endpoint}"] == ["ip saddr 10.244.1.5 jump mark-for-masquerade",
                                              f"update @affinity-{endpoint} {{ ip saddr }}",
                                              "meta l4proto tcp dnat to 10.244.1.5:8080"]


@pytest.mark.parametrize("version", [(1, 33), (1, 38), "1.37", None])
def test_only_the_rendered_releases_are_accepted(version):
    with pytest.raises(ValueError, match="version"):
        nftables_state([WEB], [], NODE, NODE_IPS, version=version)


def many_shapes():
    """Services of every shape a memo must tell apart, their endpoints on node1-3, dual-stack."""
    affinity = {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}
    services = [
        service("web", ["10.96.0.10", "fd00:10:96::10"], [port(80, name="http", node_port=30080)],
                service_type="NodePort"),
        service("sticky", ["10.96.0.11"], [port(80, name="http")], **affinity),
        service("local", ["10.96.0.12"], [port(80, name="http", node_port=30081)], service_type="NodePort",
                externalTrafficPolicy="Local"),
        service("inside", ["10.96.0.13"], [port(80, name="http")], internalTrafficPolicy="Local"),
        service("guarded", ["10.96.0.14"], [port(80, name="http", node_port=30082)], service_type="LoadBalancer",
                loadBalancerSourceRanges=["192.0.2.0/25"], status=[{"ip": "198.51.100.10"}]),
        service("empty", ["10.96.0.15"], [port(80, name="http")], externalIPs=["198.51.100.7"]),
        # claims the external IP:port "empty" claimed first, and is the same everywhere
        service("second", ["10.96.0.16"], [port(80, name="http")], externalIPs=["198.51.100.7"]),
    ]
    spread = [ep("10.244.1.5", "node1"), ep("10.244.2.6", "node2"), ep("10.244.3.7", "node3")]
    slices = [web_slice(spread, name=name) for name in ("web", "sticky", "local", "inside", "guarded", "second")]
    slices.append(web_slice([ep("fd00:10:244::5", "node2")], name="web", address_type="IPv6"))
    return services, slices


@pytest.mark.parametrize("version", [(1, 35), (1, 37)])
def test_many_nodes_through_one_cluster_are_each_the_node_rendered_alone(version):
    """With a cluster's memo, each node's table is the one rendered without a memo, character for
    character: the ports the same on every node are recorded on the first node and done again on the
    next ones, their hairpin elements (endpoints on the node) added for each node."""
    services, slices = many_shapes()
    cluster = Cluster(services, slices)
    nodes = {"node1": ["192.0.2.11", "2001:db8::11"], "node2": ["192.0.2.12", "2001:db8::12"],
             "node3": ["192.0.2.200", "2001:db8::13"], "node4": ["192.0.2.14", "2001:db8::14"]}
    options = {"cluster_cidr": "10.244.0.0/16,fd00:10:244::/56", "service_cidrs": ["10.96.0.0/12"],
               "version": version}
    for name, node_ips in list(nodes.items()) * 2:
        through_memo = nftables_state(cluster, None, name, node_ips, **options)
        for family, rendered in through_memo.items():
            alone = nftables_table(Cluster(services, slices).service_ports(name, family), family, node_ips, **options)
            assert rendered == alone, (name, family)
    assert cluster.memo["nftables"]  # the memo was used
    latest = nftables_state(cluster, None, "node2", nodes["node2"], **options)["ipv4"]["content"]
    if version == (1, 37):  # node2's own endpoints reaching their Services are masqueraded, on node2 only
        assert "10.244.2.6 . 10.244.2.6 . tcp . 8080" in elements(latest, "hairpin-connections")
        assert "10.244.2.6" not in " ".join(elements(nftables_state(cluster, None, "node4", nodes["node4"],
                                                                    **options)["ipv4"]["content"],
                                                     "hairpin-connections"))
    # other options render other rules: not the first node's recording
    other = nftables_state(cluster, None, "node4", nodes["node4"], **dict(options, masquerade_bit=3))["ipv4"]
    assert other == nftables_table(Cluster(services, slices).service_ports("node4", IPV4), IPV4, nodes["node4"],
                                   **dict(options, masquerade_bit=3))
