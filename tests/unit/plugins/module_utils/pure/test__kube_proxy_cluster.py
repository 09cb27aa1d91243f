# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One Cluster rendered for many nodes is, node by node, what each node's own render of the lists is.

The cluster mixes every shape whose rendering depends on the node - Local traffic policies, endpoints
on this and other nodes, ready / serving-terminating / not-ready endpoints, NodePorts, LoadBalancer
IPs with source ranges, external IPs, session affinity, dual-stack - so state that leaked from one
node's render into the next, or a node-independent part computed for the wrong node, shows as a
difference."""

from __future__ import annotations

import copy
import random

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import (
    Cluster,
)
from ansible_collections.kubeipvs.node.plugins.modules.kube_proxy_state import render

NODES = {"node1": ["192.0.2.11", "2001:db8::11"], "node2": ["192.0.2.12", "2001:db8::12"], "node3": ["192.0.2.13"]}


ZONES = {"node1": "zone-a", "node2": "zone-b", "node3": "zone-a"}


def random_cluster(seed, count=60, hints=False):
    """Services and EndpointSlices; with ``hints``, a third of the Services' endpoints carry topology
    hints (zone hints on all, on most, or node hints as well)."""
    rng = random.Random(seed)
    services, slices = [], []
    for index in range(count):
        name = f"svc{index}"
        dual = rng.random() < 0.3
        cluster_ips = [f"10.96.{index // 250}.{index % 250 + 1}"] + ([f"fd00::{index + 1:x}"] if dual else [])
        kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
        ports = [{"name": f"p{n}", "port": 80 + n, "protocol": rng.choice(["TCP", "TCP", "UDP", "SCTP"]),
                  "targetPort": 8080 + n,
                  **({"nodePort": 30000 + index * 3 + n} if kind != "ClusterIP" else {})}
                 for n in range(rng.randint(1, 3))]
        spec = {"type": kind, "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips, "ports": ports}
        if kind != "ClusterIP" or rng.random() < 0.2:
            spec["externalTrafficPolicy"] = rng.choice(["Cluster", "Local"])
        if kind == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
            spec["healthCheckNodePort"] = 32000 + index
        if rng.random() < 0.3:
            spec["internalTrafficPolicy"] = "Local"
        if rng.random() < 0.2:
            spec["externalIPs"] = [f"198.51.100.{index % 250 + 1}"]
        if rng.random() < 0.2:
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": rng.randint(1, 86400)}}
        service = {"metadata": {"name": name, "namespace": rng.choice(["default", "apps"])}, "spec": spec}
        if kind == "LoadBalancer":
            service["status"] = {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{index % 250 + 1}"}]}}
            if rng.random() < 0.5:
                spec["loadBalancerSourceRanges"] = ["192.0.2.0/24", "198.18.0.0/15"]
        services.append(service)
        hinted = hints and rng.random() < 0.35
        for family, address_type in ([("v4", "IPv4")] + ([("v6", "IPv6")] if dual else [])):
            endpoints = []
            for e in range(rng.randint(0, 5)):
                address = (f"10.244.{index % 250}.{e + 1}" if family == "v4" else f"fd01::{index:x}:{e + 1:x}")
                state = rng.choice([{"ready": True}, {"ready": True}, {"ready": False},
                                    {"ready": False, "serving": True, "terminating": True},
                                    {"ready": False, "serving": False, "terminating": True}])
                endpoints.append({"addresses": [address], "conditions": state,
                                  "nodeName": rng.choice(sorted(NODES))})
                if hinted and rng.random() < 0.9:
                    endpoints[-1]["hints"] = {"forZones": [{"name": rng.choice(["zone-a", "zone-b"])}]}
                    if rng.random() < 0.5:
                        endpoints[-1]["hints"]["forNodes"] = [{"name": endpoints[-1]["nodeName"]}]
            slices.append({"metadata": {"name": f"{name}-{family}", "namespace": service["metadata"]["namespace"],
                                        "labels": {"kubernetes.io/service-name": name}},
                           "addressType": address_type, "endpoints": endpoints,
                           "ports": [{"name": p["name"], "port": p["targetPort"], "protocol": p["protocol"]}
                                     for p in ports]})
    return services, slices


def params(mode, node_name):
    return {"mode": mode, "node_name": node_name, "scheduler": "rr", "ip_families": [], "node_port_addresses": None,
            "cluster_cidr": "10.244.0.0/16,fd01::/48", "masquerade_bit": 14, "node_port_cidrs": [],
            "localhost_node_ports": True, "masquerade_all": False}


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_cluster_renders_every_node_as_its_own_lists_do(mode, seed):
    services, slices = random_cluster(seed)
    pristine = copy.deepcopy((services, slices))
    alone = {node: render(params(mode, node), services, slices, ips, ["10.96.0.0/12"]) for node, ips in NODES.items()}
    cluster = Cluster(services, slices)
    # every node, twice, in both orders: nothing of one node's render reaches another's
    for node in [*NODES, *reversed(NODES)]:
        assert render(params(mode, node), cluster, None, NODES[node], ["10.96.0.0/12"]) == alone[node], node
    # the nodes do differ, so the comparison above can tell them apart
    assert len({repr(state) for state in alone.values()}) == len(NODES)
    assert (services, slices) == pristine  # the API's objects are read, never changed


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
@pytest.mark.parametrize("seed", [6, 7])
def test_one_cluster_renders_every_node_of_a_zoned_cluster_as_its_own_lists_do(mode, seed):
    """Topology hints make a Service's endpoints depend on the node's name and zone: what one node's
    render finds for such a Service is never another's."""
    services, slices = random_cluster(seed, hints=True)
    alone = {node: render(params(mode, node), Cluster(services, slices, ZONES), None, ips, ["10.96.0.0/12"])
             for node, ips in NODES.items()}
    cluster = Cluster(services, slices, ZONES)
    for node in [*NODES, *reversed(NODES)]:
        assert render(params(mode, node), cluster, None, NODES[node], ["10.96.0.0/12"]) == alone[node], node
    # the zones matter: the same cluster rendered as if every node had no zone label differs
    unzoned = Cluster(services, slices)
    assert any(render(params(mode, node), unzoned, None, ips, ["10.96.0.0/12"]) != alone[node]
               for node, ips in NODES.items())


def expected_cluster_endpoints(endpoints, node, zone):
    """kube-proxy's topologyModeFromHints and its filter, written out from the raw endpoints: the
    addresses of the ready endpoints the node's topology admits (all ready ones without a mode)."""
    ready = [e for e in endpoints if (e.get("conditions") or {}).get("ready") is not False]
    names = {id(e): ({h["name"] for h in (e.get("hints") or {}).get("forNodes") or []},
                     {h["name"] for h in (e.get("hints") or {}).get("forZones") or []}) for e in ready}
    if ready and all(names[id(e)][0] for e in ready) and any(node in names[id(e)][0] for e in ready):
        return sorted(e["addresses"][0] for e in ready if node in names[id(e)][0])
    if ready and zone and all(names[id(e)][1] for e in ready) and any(zone in names[id(e)][1] for e in ready):
        return sorted(e["addresses"][0] for e in ready if zone in names[id(e)][1])
    return sorted(e["addresses"][0] for e in ready)


def test_each_node_of_a_shared_zoned_cluster_gets_the_endpoints_its_hints_give_it():
    services, slices = random_cluster(8, hints=True)
    cluster = Cluster(services, slices, ZONES)
    by_service = {(sl["metadata"]["namespace"], sl["metadata"]["labels"]["kubernetes.io/service-name"],
                   sl["addressType"]): sl["endpoints"] for sl in slices}
    checked = set()
    for node in [*NODES, *reversed(NODES)]:
        for family, address_type in (("ipv4", "IPv4"), ("ipv6", "IPv6")):
            for sp in cluster.service_ports(node, family):
                if sp.internal_local:
                    continue
                endpoints = by_service[(sp.namespace, sp.name, address_type)]
                if not any(e["conditions"].get("ready") is not False for e in endpoints):
                    continue  # serving-terminating fallback, hints aside
                assert sorted(e.address for e in sp.cluster_endpoints) == \
                    expected_cluster_endpoints(endpoints, node, ZONES[node]), (node, sp.service_port_name)
                if any("hints" in e for e in endpoints):
                    checked.add((node, sp.service_port_name, tuple(sorted(e.address for e in sp.cluster_endpoints))))
    # hinted Services were checked on every node, and some of them serve nodes differently
    assert {node for node, _name, _endpoints in checked} == set(NODES)
    per_service = {}
    for _node, name, endpoints in checked:
        per_service.setdefault(name, set()).add(endpoints)
    assert any(len(seen) > 1 for seen in per_service.values())


def test_the_cluster_parses_each_family_once_and_gives_each_node_its_own_endpoints():
    services, slices = random_cluster(4)
    cluster = Cluster(services, slices)
    for family in ("ipv4", "ipv6"):
        for node in NODES:
            shared = cluster.service_ports(node, family)
            own = Cluster(services, slices).service_ports(node, family)  # a cluster for this node alone
            assert [(sp.service_port_name, sp.protocol, [(e.address, e.port, e.local) for e in sp.endpoints],
                     [e.address for e in sp.internal_endpoints], [e.address for e in sp.external_endpoints])
                    for sp in shared] == \
                   [(sp.service_port_name, sp.protocol, [(e.address, e.port, e.local) for e in sp.endpoints],
                     [e.address for e in sp.internal_endpoints], [e.address for e in sp.external_endpoints])
                    for sp in own]
    assert sorted(cluster._families) == ["ipv4", "ipv6"]  # pylint: disable=protected-access


def test_a_bad_object_fails_when_the_cluster_is_built():
    services, slices = random_cluster(5, count=3)
    services[1]["spec"]["clusterIP"] = services[1]["spec"]["clusterIPs"][0] = "10.96.0.999"
    with pytest.raises(ValueError, match="svc1"):
        Cluster(services, slices)


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
def test_one_cluster_renders_each_node_for_its_own_options(mode):
    services, slices = random_cluster(6)
    cluster = Cluster(services, slices)
    variants = [{}, {"cluster_cidr": ""}, {"masquerade_bit": 3}, {"node_port_addresses": ["192.0.2.11", "127.0.0.1"]},
                {"ip_families": ["ipv4", "ipv6"]}]
    for variant in variants + variants[::-1]:
        node_params = dict(params(mode, "node1"), **variant)
        assert render(node_params, cluster, None, NODES["node1"], ["10.96.0.0/12"]) == \
            render(node_params, services, slices, NODES["node1"], ["10.96.0.0/12"]), variant


def ipv6_in(state):
    """Whether anything of IPv6 is in a rendered state: an IPv6 address, set, table or chain family."""
    text = repr(state)
    return any(mark in text for mark in ("fd00::", "2001:db8::", "KUBE-6-", "'ipv6'", "'ip6'"))


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
def test_a_node_whose_kernel_runs_ipv4_alone_gets_nothing_of_the_cluster_s_ipv6(mode):
    services, slices = random_cluster(7)
    assert any(len(s["spec"]["clusterIPs"]) == 2 for s in services)  # a dual-stack cluster
    node_ips = NODES["node3"]  # IPv4 only: its IPv6 is off
    unknown = render(dict(params(mode, "node3"), cluster_cidr="10.244.0.0/16"), services, slices, node_ips)
    assert ipv6_in(unknown), "the kernel not known: the Services' IPv6 ClusterIPs are rendered"
    single = render(dict(params(mode, "node3"), cluster_cidr="10.244.0.0/16", ip_families=["ipv4"]),
                    services, slices, node_ips)
    assert not ipv6_in(single), "kube-proxy runs single-stack IPv4 there"
    assert single["counts"]["services_read"] == len(services)
    both = render(dict(params(mode, "node3"), cluster_cidr="10.244.0.0/16", ip_families=["ipv6", "ipv4"]),
                  services, slices, node_ips)
    assert both == unknown


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
def test_a_node_ip_of_a_family_its_kernel_does_not_run_fails(mode):
    services, slices = random_cluster(8, count=5)
    with pytest.raises(ValueError, match="ip_families: the node runs kube-proxy for ipv4 only, but its node IPs "
                                         "are ipv4, ipv6"):
        render(dict(params(mode, "node1"), ip_families=["ipv4"]), services, slices, NODES["node1"])
