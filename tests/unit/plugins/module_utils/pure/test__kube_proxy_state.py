# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Table-driven: Services + EndpointSlices (as the API returns them) -> what kube-proxy's IPVS mode
programs on node1 (node IP 192.0.2.11)."""

from __future__ import annotations

import ipaddress

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipset import normalise_entries
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import normalize_services
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import Cluster, ipset_name, node_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import normalize_addresses

NODE = "node1"
NODE_IPS = ["192.0.2.11"]


def service(name, cluster_ips, ports, service_type="ClusterIP", namespace="default", status=None, labels=None,
            **spec):
    body = {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": dict(spec, type=service_type, clusterIP=cluster_ips[0] if cluster_ips else None,
                         clusterIPs=cluster_ips, ports=ports)}
    if status:
        body["status"] = {"loadBalancer": {"ingress": status}}
    return body


def port(number, protocol="TCP", name="", node_port=None):
    item = {"name": name, "port": number, "protocol": protocol, "targetPort": number}
    if node_port:
        item["nodePort"] = node_port
    return item


def ep(address, node, ready=True, serving=None, terminating=None):
    conditions = {"ready": ready}
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [address], "conditions": conditions, "nodeName": node}


def endpoint_slice(service_name, endpoints, ports, address_type="IPv4", namespace="default"):
    return {"metadata": {"name": f"{service_name}-{address_type.lower()}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": name, "port": number, "protocol": protocol} for name, number, protocol in ports]}


def rs(address, port_number):
    return {"address": address, "port": port_number, "weight": 1, "forwarding": "nat"}


def vs(address, port_number, real_servers, protocol="tcp", family="inet", **extra):
    return dict({"protocol": protocol, "address": address, "port": port_number, "family": family, "scheduler": "rr"},
                **extra, real_servers=real_servers)


TWO_ENDPOINTS = [ep("10.244.1.5", "node1"), ep("10.244.2.6", "node2")]

CASES = [
    pytest.param(
        [service("dns", ["10.96.0.10"], [port(53, "UDP", "dns"), port(53, "TCP", "dns-tcp")])],
        [endpoint_slice("dns", TWO_ENDPOINTS, [("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")])],
        {"addresses": ["10.96.0.10"],
         "services": [vs("10.96.0.10", 53, [rs("10.244.1.5", 5353), rs("10.244.2.6", 5353)]),
                      vs("10.96.0.10", 53, [rs("10.244.1.5", 5353), rs("10.244.2.6", 5353)], protocol="udp")],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.10,tcp:53", "10.96.0.10,udp:53"],
                    "KUBE-LOOP-BACK": ["10.244.1.5,tcp:5353,10.244.1.5", "10.244.1.5,udp:5353,10.244.1.5"],
                    "KUBE-IPVS-IPS": ["10.96.0.10"]}},
        id="clusterip-two-protocols-loopback-only-for-local-endpoints"),
    pytest.param(
        [service("web", ["10.96.0.20"], [port(80, node_port=30080)], "NodePort")],
        [endpoint_slice("web", [ep("10.244.2.6", "node2")], [("", 8080, "TCP")])],
        {"addresses": ["10.96.0.20"],
         "services": [vs("10.96.0.20", 80, [rs("10.244.2.6", 8080)]),
                      vs("192.0.2.11", 30080, [rs("10.244.2.6", 8080)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.20,tcp:80"], "KUBE-NODE-PORT-TCP": ["30080"],
                    "KUBE-IPVS-IPS": ["10.96.0.20"]}},
        id="nodeport-on-each-node-ip-not-bound"),
    pytest.param(
        [service("lb", ["10.96.0.30"], [port(443, node_port=30443)], "LoadBalancer",
                 status=[{"ip": "203.0.113.10"}, {"ip": "203.0.113.11", "ipMode": "Proxy"},
                         {"hostname": "lb.example"}],
                 externalTrafficPolicy="Local", healthCheckNodePort=32000)],
        [endpoint_slice("lb", TWO_ENDPOINTS, [("", 8443, "TCP")])],
        {"addresses": ["10.96.0.30", "203.0.113.10"],
         "services": [vs("10.96.0.30", 443, [rs("10.244.1.5", 8443), rs("10.244.2.6", 8443)]),
                      vs("192.0.2.11", 30443, [rs("10.244.1.5", 8443)]),
                      vs("203.0.113.10", 443, [rs("10.244.1.5", 8443)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.30,tcp:443"], "KUBE-LOAD-BALANCER": ["203.0.113.10,tcp:443"],
                    "KUBE-LOAD-BALANCER-LOCAL": ["203.0.113.10,tcp:443"], "KUBE-NODE-PORT-TCP": ["30443"],
                    "KUBE-NODE-PORT-LOCAL-TCP": ["30443"], "KUBE-HEALTH-CHECK-NODE-PORT": ["32000"],
                    "KUBE-LOOP-BACK": ["10.244.1.5,tcp:8443,10.244.1.5"],
                    "KUBE-IPVS-IPS": ["10.96.0.30", "203.0.113.10"]}},
        id="loadbalancer-external-local-uses-local-endpoints-skips-proxy-ipmode"),
    pytest.param(
        [service("lb", ["10.96.0.31"], [port(80, node_port=30081)], "LoadBalancer", status=[{"ip": "203.0.113.12"}],
                 externalTrafficPolicy="Local")],
        [endpoint_slice("lb", [ep("10.244.2.6", "node2")], [("", 80, "TCP")])],
        {"addresses": ["10.96.0.31", "203.0.113.12"],
         "services": [vs("10.96.0.31", 80, [rs("10.244.2.6", 80)]), vs("192.0.2.11", 30081, [rs("10.244.2.6", 80)]),
                      vs("203.0.113.12", 80, [rs("10.244.2.6", 80)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.31,tcp:80"], "KUBE-LOAD-BALANCER": ["203.0.113.12,tcp:80"],
                    "KUBE-LOAD-BALANCER-LOCAL": ["203.0.113.12,tcp:80"], "KUBE-NODE-PORT-TCP": ["30081"],
                    "KUBE-NODE-PORT-LOCAL-TCP": ["30081"], "KUBE-IPVS-IPS": ["10.96.0.31", "203.0.113.12"]}},
        id="external-local-without-local-endpoints-falls-back-to-cluster-ones"),
    pytest.param(
        [service("lbfw", ["10.96.0.32"], [port(80)], "LoadBalancer", status=[{"ip": "203.0.113.13"}],
                 loadBalancerSourceRanges=["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/64"])],
        [endpoint_slice("lbfw", [ep("10.244.2.6", "node2")], [("", 80, "TCP")])],
        {"addresses": ["10.96.0.32", "203.0.113.13"],
         "services": [vs("10.96.0.32", 80, [rs("10.244.2.6", 80)]), vs("203.0.113.13", 80, [rs("10.244.2.6", 80)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.32,tcp:80"], "KUBE-LOAD-BALANCER": ["203.0.113.13,tcp:80"],
                    "KUBE-LOAD-BALANCER-FW": ["203.0.113.13,tcp:80"],
                    "KUBE-LOAD-BALANCER-SOURCE-CIDR": ["203.0.113.13,tcp:80,192.0.2.0/24",
                                                       "203.0.113.13,tcp:80,198.51.100.7"],
                    "KUBE-LOAD-BALANCER-SOURCE-IP": ["203.0.113.13,tcp:80,203.0.113.13"],
                    "KUBE-IPVS-IPS": ["10.96.0.32", "203.0.113.13"]}},
        id="loadbalancer-source-ranges-node-inside-a-range"),
    pytest.param(
        [service("lbany", ["10.96.0.33"], [port(80)], "LoadBalancer", status=[{"ip": "203.0.113.14"}],
                 loadBalancerSourceRanges=["192.0.2.0/24", " 0.0.0.0/0 "])],
        [endpoint_slice("lbany", [ep("10.244.2.6", "node2")], [("", 80, "TCP")])],
        {"addresses": ["10.96.0.33", "203.0.113.14"],
         "services": [vs("10.96.0.33", 80, [rs("10.244.2.6", 80)]), vs("203.0.113.14", 80, [rs("10.244.2.6", 80)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.33,tcp:80"], "KUBE-LOAD-BALANCER": ["203.0.113.14,tcp:80"],
                    "KUBE-IPVS-IPS": ["10.96.0.33", "203.0.113.14"]}},
        id="loadbalancer-source-range-of-length-zero-allows-every-source-as-no-ranges"),
    pytest.param(
        [service("ext", ["10.96.0.40"], [port(8080)], externalIPs=["198.51.100.20", "192.0.2.11", "2001:db8::99"]),
         service("extlocal", ["10.96.0.41"], [port(8081)], "NodePort", externalIPs=["198.51.100.21"],
                 externalTrafficPolicy="Local")],
        [endpoint_slice("ext", [ep("10.244.2.6", "node2")], [("", 80, "TCP")])],
        {"addresses": ["10.96.0.40", "10.96.0.41", "198.51.100.20", "198.51.100.21"],
         "services": [vs("10.96.0.40", 8080, [rs("10.244.2.6", 80)]), vs("10.96.0.41", 8081, []),
                      vs("192.0.2.11", 8080, [rs("10.244.2.6", 80)]), vs("198.51.100.20", 8080, [rs("10.244.2.6", 80)]),
                      vs("198.51.100.21", 8081, [])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.40,tcp:8080", "10.96.0.41,tcp:8081"],
                    "KUBE-EXTERNAL-IP": ["192.0.2.11,tcp:8080", "198.51.100.20,tcp:8080"],
                    "KUBE-EXTERNAL-IP-LOCAL": ["198.51.100.21,tcp:8081"],
                    "KUBE-IPVS-IPS": ["10.96.0.40", "10.96.0.41", "198.51.100.20", "198.51.100.21"]}},
        id="external-ips-node-ip-not-bound-local-policy-set-no-endpoints-no-real-servers"),
    pytest.param(
        [service("sticky", ["10.96.0.50"], [port(80)], sessionAffinity="ClientIP"),
         service("sticky60", ["10.96.0.51"], [port(80)], sessionAffinity="ClientIP",
                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})],
        [],
        {"addresses": ["10.96.0.50", "10.96.0.51"],
         "services": [vs("10.96.0.50", 80, [], persistence_timeout=10800),
                      vs("10.96.0.51", 80, [], persistence_timeout=60)],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.50,tcp:80", "10.96.0.51,tcp:80"],
                    "KUBE-IPVS-IPS": ["10.96.0.50", "10.96.0.51"]}},
        id="session-affinity-default-and-configured-timeout"),
    pytest.param(
        [service("term", ["10.96.0.60"], [port(80)]), service("mixed", ["10.96.0.61"], [port(80)])],
        [endpoint_slice("term", [ep("10.244.1.7", "node1", ready=False, serving=True, terminating=True),
                                 ep("10.244.2.7", "node2", ready=False, serving=False, terminating=True),
                                 ep("10.244.2.8", "node2", ready=False)], [("", 80, "TCP")]),
         endpoint_slice("mixed", [ep("10.244.1.9", "node1"),
                                  ep("10.244.2.9", "node2", ready=False, serving=True, terminating=True)],
                        [("", 80, "TCP")])],
        {"addresses": ["10.96.0.60", "10.96.0.61"],
         "services": [vs("10.96.0.60", 80, [rs("10.244.1.7", 80)]), vs("10.96.0.61", 80, [rs("10.244.1.9", 80)])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.60,tcp:80", "10.96.0.61,tcp:80"],
                    "KUBE-LOOP-BACK": ["10.244.1.7,tcp:80,10.244.1.7", "10.244.1.9,tcp:80,10.244.1.9"],
                    "KUBE-IPVS-IPS": ["10.96.0.60", "10.96.0.61"]}},
        id="serving-terminating-only-when-nothing-is-ready"),
    pytest.param(
        [service("internal", ["10.96.0.70"], [port(80)], internalTrafficPolicy="Local"),
         service("internal-none", ["10.96.0.71"], [port(80)], internalTrafficPolicy="Local")],
        [endpoint_slice("internal", TWO_ENDPOINTS, [("", 80, "TCP")]),
         endpoint_slice("internal-none", [ep("10.244.2.6", "node2")], [("", 81, "TCP")])],
        {"addresses": ["10.96.0.70", "10.96.0.71"],
         "services": [vs("10.96.0.70", 80, [rs("10.244.1.5", 80)]), vs("10.96.0.71", 80, [])],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.70,tcp:80", "10.96.0.71,tcp:80"],
                    "KUBE-LOOP-BACK": ["10.244.1.5,tcp:80,10.244.1.5"], "KUBE-IPVS-IPS": ["10.96.0.70", "10.96.0.71"]}},
        id="internal-traffic-policy-local-only-local-endpoints"),
    pytest.param(
        [service("headless", [], [port(80)]), service("none", ["None"], [port(80)]),
         service("ext-name", [], [port(80)], "ExternalName", externalName="example.org"),
         service("other-proxy", ["10.96.0.80"], [port(80)], labels={"service.kubernetes.io/service-proxy-name": "x"})],
        [endpoint_slice("none", TWO_ENDPOINTS, [("", 80, "TCP")])],
        {"addresses": [], "services": [], "ipsets": {}},
        id="headless-externalname-and-other-proxies-are-skipped"),
    pytest.param(
        [service("sctp", ["10.96.0.90"], [port(9000, "SCTP", node_port=30900)], "NodePort",
                 externalTrafficPolicy="Local")],
        [endpoint_slice("sctp", [ep("10.244.1.5", "node1")], [("", 9000, "SCTP")])],
        {"addresses": ["10.96.0.90"],
         "services": [vs("10.96.0.90", 9000, [rs("10.244.1.5", 9000)], protocol="sctp"),
                      vs("192.0.2.11", 30900, [rs("10.244.1.5", 9000)], protocol="sctp")],
         "ipsets": {"KUBE-CLUSTER-IP": ["10.96.0.90,sctp:9000"], "KUBE-NODE-PORT-SCTP-HASH": ["192.0.2.11,sctp:30900"],
                    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": ["192.0.2.11,sctp:30900"],
                    "KUBE-LOOP-BACK": ["10.244.1.5,sctp:9000,10.244.1.5"], "KUBE-IPVS-IPS": ["10.96.0.90"]}},
        id="sctp-nodeport-hash-set-with-node-ip"),
]


def by_key(services):
    return sorted(services, key=lambda s: (s["protocol"], s["address"], s["port"]))


def address_order(server):
    address = ipaddress.ip_address(server["address"])
    return (address.version, int(address), server["protocol"], server["port"])


def assert_listed_in_documented_order(listed):
    """The node's own virtual servers, then those the same on every node (the shared run), each part
    family by family in address order."""
    assert listed[listed.head:] == (listed.run.items if listed.run else [])
    for part in (listed[:listed.head], listed[listed.head:]):
        assert part == sorted(part, key=address_order)


@pytest.mark.parametrize("services, slices, expected", CASES)
def test_node_state(services, slices, expected):
    state = node_state(services, slices, NODE, NODE_IPS)
    assert state["dummy_interface"]["addresses"] == expected["addresses"]
    assert by_key(state["ipvs_sync"]["services"]) == by_key(expected["services"])
    assert_listed_in_documented_order(state["ipvs_sync"]["services"])
    assert {name: members for name, members in state["ipsets"].items() if members} == expected["ipsets"]


def test_dual_stack_service_gets_ipv6_sets_and_services():
    services = [service("dual", ["10.96.0.100", "fd00:10:96::100"], [port(80, node_port=30100)], "NodePort",
                        ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")]
    slices = [endpoint_slice("dual", [ep("10.244.1.5", "node1")], [("", 8080, "TCP")]),
              endpoint_slice("dual", [ep("fd00:10:244:1::5", "node1"), ep("FD00:10:244:2:0::6", "node2")],
                             [("", 8080, "TCP")], "IPv6")]
    state = node_state(services, slices, NODE, ["192.0.2.11", "2001:db8::11"])
    assert state["dummy_interface"]["addresses"] == ["10.96.0.100", "fd00:10:96::100"]
    v6 = [s for s in state["ipvs_sync"]["services"] if s["family"] == "inet6"]
    assert v6 == [vs("2001:db8::11", 30100, [rs("fd00:10:244:1::5", 8080), rs("fd00:10:244:2::6", 8080)],
                     family="inet6"),
                  vs("fd00:10:96::100", 80, [rs("fd00:10:244:1::5", 8080), rs("fd00:10:244:2::6", 8080)],
                     family="inet6")]
    assert state["ipsets"]["KUBE-6-CLUSTER-IP"] == ["fd00:10:96::100,tcp:80"]
    assert state["ipsets"]["KUBE-6-LOOP-BACK"] == ["fd00:10:244:1::5,tcp:8080,fd00:10:244:1::5"]
    assert state["ipsets"]["KUBE-6-NODE-PORT-TCP"] == ["30100"]
    assert state["ipsets"]["KUBE-CLUSTER-IP"] == ["10.96.0.100,tcp:80"]
    assert state["ipset_types"]["KUBE-6-LOAD-BALANCER-SOURCE-CID"] == "hash:ip,port,net"
    v4 = [s for s in state["ipvs_sync"]["services"] if s["family"] == "inet"]
    assert [s["address"] for s in v4] == ["192.0.2.11", "10.96.0.100"]  # the node's own first
    # The ClusterIP ports a mode switch verifies - NodePorts are not ClusterIP ports.
    assert state["cluster_ip_ports"] == ["tcp/10.96.0.100:80", "tcp/[fd00:10:96::100]:80"]


def test_ipv6_only_node_has_no_ipv4_nodeports():
    services = [service("v6", ["fd00:10:96::7"], [port(80, node_port=30007)], "NodePort")]
    state = node_state(services, [], NODE, ["2001:db8::11"])
    assert [(s["address"], s["port"]) for s in state["ipvs_sync"]["services"]] == [
        ("2001:db8::11", 30007), ("fd00:10:96::7", 80)]
    assert "KUBE-CLUSTER-IP" not in state["ipsets"]


def test_scheduler_and_mh_flag():
    services = [service("a", ["10.96.0.1"], [port(443)])]
    assert node_state(services, [], NODE, NODE_IPS, "wrr")["ipvs_sync"]["services"][0]["scheduler"] == "wrr"
    mh = node_state(services, [], NODE, NODE_IPS, "mh")["ipvs_sync"]["services"][0]
    assert mh["scheduler"] == "mh" and mh["scheduler_flags"] == ["mh-port"]


def test_duplicate_endpoints_across_slices_count_once_and_ports_match_by_name_and_protocol():
    services = [service("a", ["10.96.0.1"], [port(80, name="http"), port(80, "UDP", name="http")])]
    slices = [endpoint_slice("a", [ep("10.244.1.5", "node2")], [("http", 8080, "TCP")]),
              endpoint_slice("a", [ep("10.244.1.5", "node2")], [("http", 8080, "TCP"), ("web", 9090, "TCP")]),
              endpoint_slice("b", [ep("10.244.9.9", "node2")], [("http", 8080, "TCP")])]
    services_out = node_state(services, slices, NODE, NODE_IPS)["ipvs_sync"]["services"]
    assert [(s["protocol"], s["real_servers"]) for s in services_out] == [
        ("tcp", [rs("10.244.1.5", 8080)]), ("udp", [])]


def test_reused_pod_ip_prefers_the_endpoint_that_is_not_terminating():
    services = [service("a", ["10.96.0.1"], [port(80)])]
    terminating = ep("10.244.1.5", "node2", ready=False, serving=False, terminating=True)
    for slices in ([endpoint_slice("a", [terminating], [("", 80, "TCP")]),
                    endpoint_slice("a", [ep("10.244.1.5", "node2")], [("", 80, "TCP")])],
                   [endpoint_slice("a", [ep("10.244.1.5", "node2")], [("", 80, "TCP")]),
                    endpoint_slice("a", [terminating], [("", 80, "TCP")])]):
        out = node_state(services, slices, NODE, NODE_IPS)["ipvs_sync"]["services"]
        assert out[0]["real_servers"] == [rs("10.244.1.5", 80)]


def hinted_ep(address, node, zones=(), nodes=(), **conditions):
    endpoint = ep(address, node, **conditions)
    endpoint["hints"] = {"forZones": [{"name": zone} for zone in zones], "forNodes": [{"name": n} for n in nodes]}
    return endpoint


ZONED = {"node1": "zone-a", "node2": "zone-b", "node3": "zone-a"}


@pytest.mark.parametrize("case, endpoints, zones, expected", [
    # every ready endpoint zone-hinted, some for node1's zone: those
    ("zone", [hinted_ep("10.244.1.5", "node1", ["zone-a"]), hinted_ep("10.244.2.6", "node2", ["zone-b"]),
              hinted_ep("10.244.3.7", "node3", ["zone-a"])], ZONED, ["10.244.1.5", "10.244.3.7"]),
    # a not-ready endpoint without hints has no say; it is not served either
    ("zone-not-ready", [hinted_ep("10.244.2.6", "node2", ["zone-a"]), ep("10.244.2.7", "node2", ready=False)],
     ZONED, ["10.244.2.6"]),
    # one ready endpoint without hints: every ready endpoint
    ("zone-partial", [hinted_ep("10.244.2.6", "node2", ["zone-a"]), ep("10.244.3.7", "node3")], ZONED,
     ["10.244.2.6", "10.244.3.7"]),
    # none hinted for node1's zone: every ready endpoint
    ("zone-elsewhere", [hinted_ep("10.244.2.6", "node2", ["zone-b"]), hinted_ep("10.244.3.7", "node3", ["zone-c"])],
     ZONED, ["10.244.2.6", "10.244.3.7"]),
    # node1 has no zone label: zone hints cannot apply
    ("no-zone-label", [hinted_ep("10.244.1.5", "node1", ["zone-a"]), hinted_ep("10.244.2.6", "node2", ["zone-b"])],
     {}, ["10.244.1.5", "10.244.2.6"]),
    # node hints on every ready endpoint, one for node1: that one, whatever the zones say
    ("node", [hinted_ep("10.244.1.5", "node1", ["zone-b"], ["node1"]),
              hinted_ep("10.244.3.7", "node3", ["zone-a"], ["node3"])], ZONED, ["10.244.1.5"]),
    # node hints, none for node1: the zone hints decide
    ("node-elsewhere", [hinted_ep("10.244.2.6", "node2", ["zone-b"], ["node2"]),
                        hinted_ep("10.244.3.7", "node3", ["zone-a"], ["node3"])], ZONED, ["10.244.3.7"]),
    # no ready endpoint: the serving and terminating ones, hints or not
    ("terminating", [hinted_ep("10.244.2.6", "node2", ["zone-b"], ready=False, serving=True, terminating=True)],
     ZONED, ["10.244.2.6"]),
])
def test_topology_hints_pick_the_cluster_endpoints_as_kube_proxy_does(case, endpoints, zones, expected):
    services = [service("a", ["10.96.0.1"], [port(80)])]
    slices = [endpoint_slice("a", endpoints, [("", 80, "TCP")])]
    out = node_state(Cluster(services, slices, zones), None, NODE, NODE_IPS)["ipvs_sync"]["services"]
    assert [server["address"] for server in out[0]["real_servers"]] == expected, case


def test_local_policy_ignores_hints_and_a_node_reaches_both_lists():
    """externalTrafficPolicy Local: the NodePort takes node1's endpoint, hinted for another zone; the
    ClusterIP takes the zone's; the loop-back set holds node1's endpoint as ever."""
    services = [service("a", ["10.96.0.1"], [port(80, node_port=30080)], "NodePort", externalTrafficPolicy="Local")]
    slices = [endpoint_slice("a", [hinted_ep("10.244.1.5", "node1", ["zone-b"]),
                                   hinted_ep("10.244.2.6", "node2", ["zone-a"])], [("", 80, "TCP")])]
    state = node_state(Cluster(services, slices, ZONED), None, NODE, NODE_IPS)
    servers = {(s["address"], s["port"]): [r["address"] for r in s["real_servers"]]
               for s in state["ipvs_sync"]["services"]}
    assert servers == {("10.96.0.1", 80): ["10.244.2.6"], ("192.0.2.11", 30080): ["10.244.1.5"]}


def test_without_external_ips_the_gate_leaves_them_out_but_the_port_stays_externally_accessible():
    """AllowServiceExternalIPs off: no virtual server, address or set member for the external IP; the
    port still counts as externally accessible (kube-proxy's ExternallyAccessible reads the spec), so
    a Local internal policy still takes the cluster-wide endpoints too."""
    services = [service("a", ["10.96.0.1"], [port(80)], externalIPs=["198.51.100.7"], internalTrafficPolicy="Local")]
    slices = [endpoint_slice("a", [ep("10.244.2.6", "node2")], [("", 80, "TCP")])]
    on = Cluster(services, slices)
    off = Cluster(services, slices, gates={"external_ips": False})
    with_ips = node_state(on, None, NODE, NODE_IPS)
    without = node_state(off, None, NODE, NODE_IPS)
    assert "198.51.100.7" in with_ips["dummy_interface"]["addresses"]
    assert "198.51.100.7" not in str(without)
    (sp,) = off.service_ports(NODE, IPV4)
    assert sp.external and sp.external_ips == [] and [e.address for e in sp.cluster_endpoints] == ["10.244.2.6"]


def test_without_node_hints_the_zone_hints_decide():
    services = [service("a", ["10.96.0.1"], [port(80)])]
    slices = [endpoint_slice("a", [hinted_ep("10.244.1.5", "node1", ["zone-a"], ["node1"]),
                                   hinted_ep("10.244.3.7", "node3", ["zone-a"], ["node3"])], [("", 80, "TCP")])]
    heeded = node_state(Cluster(services, slices, ZONED), None, NODE, NODE_IPS)["ipvs_sync"]["services"]
    ignored = node_state(Cluster(services, slices, ZONED, gates={"node_hints": False}), None, NODE,
                         NODE_IPS)["ipvs_sync"]["services"]
    assert [s["address"] for s in heeded[0]["real_servers"]] == ["10.244.1.5"]
    assert [s["address"] for s in ignored[0]["real_servers"]] == ["10.244.1.5", "10.244.3.7"]


@pytest.mark.parametrize("hints", [{"forZones": "zone-a"}, {"forNodes": ["node1"]}, "zone-a", {"forZones": [5]}])
def test_an_endpoint_s_hints_of_another_shape_fail_naming_the_slice(hints):
    services = [service("a", ["10.96.0.1"], [port(80)])]
    endpoint = dict(ep("10.244.1.5", "node1"), hints=hints)
    with pytest.raises(ValueError, match=r"EndpointSlice 'default'/'a-ipv4' endpoints\[0\]: hints is not a mapping"):
        Cluster(services, [endpoint_slice("a", [endpoint], [("", 80, "TCP")])])


def test_missing_conditions_mean_ready_and_serving():
    services = [service("a", ["10.96.0.1"], [port(80)])]
    slices = [endpoint_slice("a", [{"addresses": ["10.244.1.5"], "nodeName": "node2"},
                                   {"addresses": ["10.244.1.6"], "conditions": {"ready": False}}],
                             [("", 80, "TCP")])]
    out = node_state(services, slices, NODE, NODE_IPS)["ipvs_sync"]["services"]
    assert out[0]["real_servers"] == [rs("10.244.1.5", 80)]


@pytest.mark.parametrize("name, family, expected", [
    ("KUBE-CLUSTER-IP", IPV4, "KUBE-CLUSTER-IP"), ("KUBE-CLUSTER-IP", IPV6, "KUBE-6-CLUSTER-IP"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", IPV6, "KUBE-6-LOAD-BALANCER-SOURCE-CID"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", IPV6, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"),
])
def test_ipset_name(name, family, expected):
    assert ipset_name(name, family) == expected


def test_bad_node_ip():
    with pytest.raises(ValueError, match=r"node_ips: 192\.0\.2\.300 is not an IP address"):
        node_state([], [], NODE, ["192.0.2.300"])


def test_output_is_accepted_as_is_by_the_dataplane_modules():
    """The contract: dummy_interface, ipvs_sync and ipset take the output unchanged (their own
    validators), and the ipset members are already in the form ``ipset save`` prints."""
    services = [case.values[0] for case in CASES]
    slices = [case.values[1] for case in CASES]
    services = [s for group in services for s in group] + [
        service("dual", ["10.96.1.1", "fd00:10:96::1"], [port(80, node_port=31000), port(5000, "SCTP")], "NodePort",
                externalTrafficPolicy="Local", sessionAffinity="ClientIP")]
    slices = [s for group in slices for s in group] + [
        endpoint_slice("dual", [ep("fd00:10:244:1::5", "node1")], [("", 8080, "TCP"), ("", 5000, "SCTP")], "IPv6")]
    state = node_state(services, slices, NODE, ["192.0.2.11", "2001:db8::11"], "mh")

    desired, absent = normalize_services(state["ipvs_sync"]["services"])
    assert len(desired) == len(state["ipvs_sync"]["services"]) > 20 and not absent
    assert len(normalize_addresses(state["dummy_interface"]["addresses"])) == len(state["dummy_interface"]["addresses"])
    assert sum(1 for members in state["ipsets"].values() if members) > 15
    for name, members in state["ipsets"].items():
        set_type = state["ipset_types"][name]
        family = IPV6 if name.startswith("KUBE-6-") else IPV4
        port_range = (0, 65535) if set_type == "bitmap:port" else None
        assert normalise_entries(members, set_type, family, port_range) == set(members), name


# Values from the Kubernetes API are input too: checked before they become rules, the object named.

@pytest.mark.parametrize("bad, message", [
    (service("web", ["10.96.0.30"], [port(0)]), "Service 'default'/'web' spec.ports[0]: port 0 is not 1-65535"),
    (service("web", ["10.96.0.30"], [port(65536)]), "port 65536 is not 1-65535"),
    (service("web", ["10.96.0.30"], [port(True)]), "port True is not 1-65535"),
    (service("web", ["10.96.0.30"], [port(80, node_port=70000)], "NodePort"), "nodePort 70000"),
    (service("web", ["10.96.0.30"], [port(80, "ICMP")]), "protocol 'ICMP' is not one of TCP, UDP, SCTP"),
    (service("web", ["10.96.0.30"], [port(80, name="a\nb")]), "port name 'a\\\\nb' is not a DNS-1123 label"),
    (service("web\n}", ["10.96.0.30"], [port(80)]), "the name is not a DNS-1035 label"),
    (service("web", ["10.96.0.30"], [port(80)], namespace='x"y'), "the namespace is not a DNS-1123 label"),
    (service("web", ["10.96.0.30"], [port(80)], sessionAffinity="ClientIP",
             sessionAffinityConfig={"clientIP": {"timeoutSeconds": -5}}), "timeoutSeconds -5 is not 1-86400"),
    (service("web", ["10.96.0.30"], [port(80)], healthCheckNodePort=99999), "healthCheckNodePort 99999"),
    (service("web", ["fe80::1%eth0"], [port(80)]), "'fe80::1%eth0' is not an IP address"),
    (service("web", ["10.96.0.30"], [port(80)], externalIPs=["1.2.3.4\n"]), "spec.externalIPs"),
    (service("web", ["10.96.0.30"], [port(80)], "LoadBalancer", status=[{"ip": "x"}]), "ingress: 'x'"),
])
def test_hostile_services_are_refused_naming_the_object(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        node_state([bad], [], NODE, NODE_IPS)


@pytest.mark.parametrize("bad, message", [
    (endpoint_slice("web", [ep("10.244.1.5", NODE)], [("", 0, "TCP")]), "ports[0]: port 0 is not 1-65535"),
    (endpoint_slice("web", [ep("10.244.1.5", NODE)], [("", 80, "tcp")]), "protocol 'tcp'"),
    (endpoint_slice("web", [ep("10.244.1.5\n", NODE)], [("", 80, "TCP")]), "is not an IP address"),
    (endpoint_slice("web", [ep("fe80::5%x", NODE)], [("", 80, "TCP")], address_type="IPv6"), "not an IP address"),
    (endpoint_slice("web x", [ep("10.244.1.5", NODE)], [("", 80, "TCP")]), "is not a Service name"),
])
def test_hostile_endpoint_slices_are_refused_naming_the_object(bad, message):
    with pytest.raises(ValueError, match=r"EndpointSlice 'default'/'.*" + message.replace("[", r"\[").replace(
            "]", r"\]")):
        node_state([service("web", ["10.96.0.30"], [port(80)])], [bad], NODE, NODE_IPS)


def node_ports_of(state):
    return sorted((s["address"], s["port"]) for s in state["ipvs_sync"]["services"] if s["port"] >= 30000)


@pytest.mark.parametrize("cidrs, expected", [
    # no CIDR of the family, or a zero one: every address of the node
    (None, ["10.244.1.1", "127.0.0.1", "192.168.200.1"]),
    (["2001:db8::/64"], ["10.244.1.1", "127.0.0.1", "192.168.200.1"]),
    (["192.168.200.0/24", "0.0.0.0/0"], ["10.244.1.1", "127.0.0.1", "192.168.200.1"]),
    # the addresses in the CIDRs, never a loopback one
    (["192.168.200.0/24"], ["192.168.200.1"]),
    (["192.168.200.0/24", "127.0.0.0/8", "2001:db8::/64"], ["192.168.200.1"]),
    (["198.51.100.0/24"], []),
    # kube-ipvs0's addresses in the CIDRs too (kube-proxy lists every interface): the ClusterIP, not
    # the external IP that is a node address (never bound), nor the other Service's ClusterIP
    (["10.96.0.60/32", "10.244.1.0/24"], ["10.244.1.1", "10.96.0.60"]),
])
def test_ipvs_node_ports_open_on_the_node_addresses_in_node_port_addresses(cidrs, expected):
    """kube-proxy's IPVS mode opens a family's NodePorts on every node address unless its
    nodePortAddresses has CIDRs of the family, none a zero one: then on the (non-loopback) addresses
    of the node's interfaces in them."""
    services = [service("np", ["10.96.0.60"], [port(80, node_port=30060), port(9, "SCTP", "s", node_port=30009)],
                        "NodePort", externalIPs=["10.244.1.1"]),
                service("other", ["10.96.0.61"], [port(443)])]
    addresses = ["192.168.200.1", "10.244.1.1", "127.0.0.1"]
    state = node_state(services, [], NODE, NODE_IPS, node_port_addresses=addresses, node_port_cidrs=cidrs)
    assert node_ports_of(state) == sorted((ip, p) for ip in expected for p in (30009, 30060))
    members = sorted(expected, key=ipaddress.ip_address)  # as ipset lists them: in address order
    assert state["ipsets"]["KUBE-NODE-PORT-SCTP-HASH"] == [f"{ip},sctp:30009" for ip in members]
    # binding does not depend on nodePortAddresses: every node address stays unbound
    assert state["dummy_interface"]["addresses"] == ["10.96.0.60", "10.96.0.61"]


def test_node_ips_with_a_scope_are_refused():
    with pytest.raises(ValueError, match="node_ips"):
        node_state([], [], NODE, ["fe80::1%eth0"])


def test_node_ports_open_on_the_node_port_addresses_and_the_node_ip_decides_source_ranges():
    """kube-proxy's IPVS mode lists the node's interfaces for its NodePorts; its node IP (the first
    of node_ips) alone decides whether a load balancer's source ranges admit the node itself."""
    services = [service("np", ["10.96.0.60"], [port(80, node_port=30060), port(9, "SCTP", "s", node_port=30009)],
                        "NodePort", externalIPs=["10.244.1.1"]),
                service("lb", ["10.96.0.61"], [port(443)], "LoadBalancer", status=[{"ip": "203.0.113.9"}],
                        loadBalancerSourceRanges=["10.244.1.0/24"])]
    state = node_state(services, [], NODE, NODE_IPS, node_port_addresses=["192.168.200.1", "10.244.1.1"])
    node_ports = sorted((s["address"], s["port"]) for s in state["ipvs_sync"]["services"] if s["port"] >= 30000)
    assert node_ports == [("10.244.1.1", 30009), ("10.244.1.1", 30060), ("192.168.200.1", 30009),
                          ("192.168.200.1", 30060)]
    assert state["ipsets"]["KUBE-NODE-PORT-SCTP-HASH"] == ["10.244.1.1,sctp:30009", "192.168.200.1,sctp:30009"]
    assert "10.244.1.1" not in state["dummy_interface"]["addresses"]  # a node address: not bound
    # 192.0.2.11 (the node IP) is outside the range although a node-port address is inside
    assert state["ipsets"]["KUBE-LOAD-BALANCER-SOURCE-IP"] == []
    with pytest.raises(ValueError, match="node_port_addresses: eth0 is not an IP address"):
        node_state(services, [], NODE, NODE_IPS, node_port_addresses=["eth0"])


def test_many_nodes_through_one_cluster_share_the_virtual_servers_the_same_on_every_node():
    """With one Cluster for many nodes, each node's state equals the state rendered alone; the virtual
    servers the same on every node (ClusterIPs, and external and load-balancer IPs without the Local
    policy) are one run of the very same items on every node; NodePorts and Local-policy ones are
    each node's own. A node whose own address is also a Service's external IP claims another set of
    virtual servers: it gets a run of its own, and is still the node rendered alone."""
    services = [
        service("web", ["10.96.0.10", "fd00:10:96::10"], [port(80, node_port=30080)], "NodePort",
                ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
        service("sticky", ["10.96.0.11"], [port(80)], sessionAffinity="ClientIP"),
        service("local", ["10.96.0.12"], [port(80, node_port=30081)], "LoadBalancer",
                externalTrafficPolicy="Local", healthCheckNodePort=32000, status=[{"ip": "198.51.100.12"}]),
        service("inside", ["10.96.0.13"], [port(80)], internalTrafficPolicy="Local"),
        service("outside", ["10.96.0.14"], [port(80)], externalIPs=["192.0.2.13"]),
    ]
    spread = [ep("10.244.1.5", "node1"), ep("10.244.2.6", "node2"), ep("10.244.3.7", "node3")]
    slices = [endpoint_slice(name, spread, [("", 8080, "TCP")]) for name in ("web", "sticky", "local", "inside", "outside")]
    slices.append(endpoint_slice("web", [ep("fd00:10:244::5", "node2")], [("", 8080, "TCP")], "IPv6"))
    cluster = Cluster(services, slices)
    nodes = {"node1": ["192.0.2.11", "2001:db8::11"], "node2": ["192.0.2.12", "2001:db8::12"],
             "node3": ["192.0.2.13", "2001:db8::13"], "node4": ["192.0.2.14", "2001:db8::14"]}
    runs = {}
    for name, node_ips in list(nodes.items()) * 2:
        state = node_state(cluster, None, name, node_ips)
        alone = node_state(services, slices, name, node_ips)
        listed = state["ipvs_sync"]["services"]
        assert by_key(listed) == by_key(alone["ipvs_sync"]["services"]), name
        assert {key: value for key, value in state.items() if key != "ipvs_sync"} == \
            {key: value for key, value in alone.items() if key != "ipvs_sync"}, name
        assert_listed_in_documented_order(listed)
        runs.setdefault(name, listed.run)
        assert listed.shared() is listed.run is runs[name]
        own = {(s["address"], s["port"]) for s in listed[:listed.head]}
        expected_own = {(ip, 30080) for ip in node_ips} | {(node_ips[0], 30081), ("10.96.0.13", 80), ("198.51.100.12", 80)}
        assert expected_own <= own, name
    assert runs["node1"] is runs["node2"] is runs["node4"]
    assert [(s["address"], s["port"]) for s in runs["node1"].items] == [
        ("10.96.0.10", 80), ("10.96.0.11", 80), ("10.96.0.12", 80), ("10.96.0.14", 80), ("192.0.2.13", 80),
        ("fd00:10:96::10", 80)]
    # node3's address is "outside"'s external IP, on other ports than its NodePorts: the same run
    assert runs["node3"] is runs["node1"]
    # a NodePort on port 80 of node3's address claims "outside"'s external IP and port first (Services
    # in name order), so node3 has other virtual servers the same on every node than node1
    clash = [service("clash", ["10.96.0.20"], [port(80, node_port=80)], "NodePort")] + services
    clash_slices = slices + [endpoint_slice("clash", spread, [("", 8080, "TCP")])]
    shared_cluster = Cluster(clash, clash_slices)
    first = node_state(shared_cluster, None, "node1", nodes["node1"])["ipvs_sync"]["services"]
    other = node_state(shared_cluster, None, "node3", nodes["node3"])["ipvs_sync"]["services"]
    assert other.run is not first.run
    assert by_key(other) == by_key(node_state(clash, clash_slices, "node3", nodes["node3"])["ipvs_sync"]["services"])
    assert_listed_in_documented_order(other)
