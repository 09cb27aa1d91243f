# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS mode's iptables rules, as kube-proxy v1.37's writeIptablesRules writes them (restore input),
from the ipsets node_state computes for node1 (192.0.2.11)."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_ipvs_iptables import (
    ipvs_iptables_chains,
    ipvs_iptables_state,
    without_shared_chains,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import node_state

from .test__kube_proxy_state import endpoint_slice, ep, port, service

NODE, NODE_IPS = "node1", ["192.0.2.11"]
LB = "Kubernetes service lb portal"
CLUSTER = "Kubernetes service cluster ip + port for masquerade purpose"
EXTERNAL = "Kubernetes service external ip + port for masquerade and filter purpose"
EXTERNAL_LOCAL = "Kubernetes service external ip + port with externalTrafficPolicy=local"
OUTSIDE = "-m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL"


def chains(result):
    return {(c["table"], c["chain"]): c.get("rules") for c in result}


def every_shape():
    services = [
        service("web", ["10.96.0.10"], [port(80, node_port=30080), port(53, "UDP", "dns", node_port=30053),
                                        port(9, "SCTP", "sctp", node_port=30009)], "NodePort"),
        service("lb", ["10.96.0.20"], [port(443, node_port=30443)], "LoadBalancer", status=[{"ip": "203.0.113.5"}],
                externalTrafficPolicy="Local", healthCheckNodePort=32000,
                loadBalancerSourceRanges=["198.51.100.0/24"]),
        service("ext", ["10.96.0.30"], [port(8080)], externalIPs=["198.51.100.20"]),
        service("extlocal", ["10.96.0.31"], [port(8081)], "NodePort", externalIPs=["198.51.100.21"],
                externalTrafficPolicy="Local"),
    ]
    slices = [endpoint_slice("web", [ep("10.244.1.5", NODE)], [("", 80, "TCP")])]
    return node_state(services, slices, NODE, NODE_IPS)["ipsets"]


def test_every_set_filled_writes_every_rule_in_kube_proxys_order():
    result = chains(ipvs_iptables_chains(every_shape(), "ipv4", cluster_cidr="10.244.0.0/16"))
    assert result[("nat", "KUBE-SERVICES")] == [
        "-s 127.0.0.0/8 -j RETURN",
        f'-m comment --comment "{LB}" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER',
        f'-m comment --comment "{CLUSTER}" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16'
        " -j KUBE-MARK-MASQ",
        f'-m comment --comment "{EXTERNAL}" -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ',
        f'-m comment --comment "{EXTERNAL}" -m set --match-set KUBE-EXTERNAL-IP dst,dst {OUTSIDE} -j ACCEPT',
        f'-m comment --comment "{EXTERNAL}" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL'
        " -j ACCEPT",
        f'-m comment --comment "{EXTERNAL_LOCAL}" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst {OUTSIDE} -j ACCEPT',
        f'-m comment --comment "{EXTERNAL_LOCAL}" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst'
        " -m addrtype --dst-type LOCAL -j ACCEPT",
        "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT",
    ]
    assert result[("nat", "KUBE-NODE-PORT")] == [
        '-p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local"'
        " -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN",
        '-p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose"'
        " -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
        '-p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose"'
        " -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ",
        "-p sctp -m comment --comment \"Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'\""
        " -m set --match-set KUBE-NODE-PORT-SCTP-HASH dst,dst -j KUBE-MARK-MASQ",
    ]
    assert result[("nat", "KUBE-LOAD-BALANCER")] == [
        '-m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"'
        " -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN",
        "-j KUBE-MARK-MASQ",
    ]
    assert result[("nat", "KUBE-POSTROUTING")] == [
        '-m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"'
        " -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
        "-m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-j MARK --xor-mark 0x4000",
        '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]
    assert result[("nat", "KUBE-MARK-MASQ")] == ["-j MARK --or-mark 0x4000"]
    assert result[("filter", "KUBE-PROXY-FIREWALL")] == [
        '-m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange"'
        " -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL"]
    # the node (192.0.2.11) is outside the LB's only range: no SOURCE-IP return, its own connections dropped
    assert result[("filter", "KUBE-SOURCE-RANGES-FIREWALL")] == [
        '-m comment --comment "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"'
        " -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN",
        "-j DROP"]
    assert result[("filter", "KUBE-IPVS-OUT-FILTER")] == [
        "-s 203.0.113.5 -m ipvs --vaddr 203.0.113.5 --vproto tcp --vport 443 -j DROP"]
    assert result[("filter", "KUBE-FORWARD")] == [
        '-m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED'
        " -j ACCEPT"]


def test_empty_sets_leave_only_the_rules_kube_proxy_always_writes():
    ipsets = node_state([], [], NODE, NODE_IPS)["ipsets"]
    result = chains(ipvs_iptables_chains(ipsets, "ipv4", cluster_cidr="10.244.0.0/16"))
    assert result[("nat", "KUBE-SERVICES")] == ["-s 127.0.0.0/8 -j RETURN",
                                                "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"]
    assert result[("nat", "KUBE-NODE-PORT")] == []
    assert result[("nat", "KUBE-LOAD-BALANCER")] == ["-j KUBE-MARK-MASQ"]
    assert result[("nat", "KUBE-POSTROUTING")][0] == "-m mark ! --mark 0x4000/0x4000 -j RETURN"
    assert result[("filter", "KUBE-PROXY-FIREWALL")] == []
    assert result[("filter", "KUBE-SOURCE-RANGES-FIREWALL")] == ["-j DROP"]
    assert result[("filter", "KUBE-IPVS-OUT-FILTER")] == []
    # written whatever the sets hold
    assert result[("filter", "KUBE-NODE-PORT")] == [
        '-m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst'
        " -j ACCEPT"]
    assert result[("filter", "KUBE-IPVS-FILTER")] == [
        "-m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        "-m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "-m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "-m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
    ]


@pytest.mark.parametrize(("options", "expected"), [
    ({"cluster_cidr": "10.244.0.0/16"},
     f'-m comment --comment "{CLUSTER}" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ'),
    ({"cluster_cidr": "10.244.0.0/16", "masquerade_all": True},
     f'-m comment --comment "{CLUSTER}" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ'),
    ({},
     f'-m comment --comment "{CLUSTER}" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ'),
], ids=["cluster-cidr-detector", "masquerade-all-wins", "no-detector-masquerades-what-a-vip-sends"])
def test_cluster_ip_masquerade_variants(options, expected):
    ipsets = node_state([service("a", ["10.96.0.1"], [port(443)])], [], NODE, NODE_IPS)["ipsets"]
    assert chains(ipvs_iptables_chains(ipsets, "ipv4", **options))[("nat", "KUBE-SERVICES")][1] == expected


def test_ipv6_names_loopback_and_the_familys_own_cidr_and_mark_bit():
    services = [service("v6", ["fd00:10:96::10"], [port(9, "SCTP", node_port=30009)], "NodePort",
                        externalTrafficPolicy="Local")]
    ipsets = node_state(services, [], NODE, ["192.0.2.11", "2001:db8::11"])["ipsets"]
    state = ipvs_iptables_state(ipsets, cluster_cidr="10.244.0.0/16,fd00:10:244::/56", masquerade_bit=15)
    assert sorted(state) == ["ipv4", "ipv6"]
    result = chains(state["ipv6"])
    assert result[("nat", "KUBE-SERVICES")][:2] == [
        "-s ::1/128 -j RETURN",
        f'-m comment --comment "{CLUSTER}" -m set --match-set KUBE-6-CLUSTER-IP dst,dst ! -s fd00:10:244::/56'
        " -j KUBE-MARK-MASQ"]
    assert result[("nat", "KUBE-NODE-PORT")][0].endswith("--match-set KUBE-6-NODE-PORT-LOCAL-SCTP-HAS dst,dst -j RETURN")
    assert result[("nat", "KUBE-MARK-MASQ")] == ["-j MARK --or-mark 0x8000"]
    assert chains(state["ipv4"])[("nat", "KUBE-NODE-PORT")] == []  # the Service is IPv6 only


def test_jumps_are_kube_proxys_nine_in_its_order_and_shared_chains_can_be_left_out():
    result = ipvs_iptables_chains(every_shape(), "ipv4")
    jumps = [(c["table"], c["chain"], j["chain"], j["comment"]) for c in result for j in c["jumps"]]
    assert jumps == [
        ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals"),
        ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals"),
        ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules"),
        ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules"),
        ("filter", "KUBE-NODE-PORT", "INPUT", "kubernetes health check rules"),
        ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kube-proxy firewall rules"),
        ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kube-proxy firewall rules"),
        ("filter", "KUBE-IPVS-FILTER", "INPUT", "kubernetes ipvs access filter"),
        ("filter", "KUBE-IPVS-OUT-FILTER", "OUTPUT", "kubernetes ipvs access filter"),
    ]
    assert all(j["position"] == "first" and j["args"] == "" for c in result for j in c["jumps"])
    assert len(result) == 11 and all("rules" in c for c in result)
    assert sorted((c["table"], c["chain"]) for c in without_shared_chains(result)) == [
        ("filter", "KUBE-IPVS-FILTER"), ("filter", "KUBE-IPVS-OUT-FILTER"), ("filter", "KUBE-NODE-PORT"),
        ("filter", "KUBE-SOURCE-RANGES-FIREWALL"), ("nat", "KUBE-LOAD-BALANCER"), ("nat", "KUBE-NODE-PORT")]


def test_a_range_admitting_the_node_returns_its_own_connections_instead_of_dropping_them():
    services = [service("lb", ["10.96.0.20"], [port(443)], "LoadBalancer", status=[{"ip": "203.0.113.5"}],
                        loadBalancerSourceRanges=["192.0.2.0/24"])]
    result = chains(ipvs_iptables_chains(node_state(services, [], NODE, NODE_IPS)["ipsets"], "ipv4"))
    assert result[("filter", "KUBE-IPVS-OUT-FILTER")] == []
    assert result[("filter", "KUBE-SOURCE-RANGES-FIREWALL")][1] == (
        '-m comment --comment "Kubernetes service load balancer ip + port + source IP for packet filter purpose"'
        " -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN")
