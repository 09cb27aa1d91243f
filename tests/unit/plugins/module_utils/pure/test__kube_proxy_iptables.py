# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Services + EndpointSlices -> the chains kube-proxy's iptables mode writes, checked against
kube-proxy's own test data and against the documented formulas recomputed here."""

from __future__ import annotations

import base64
import hashlib

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_iptables import (
    endpoint_chain_name,
    iptables_chains,
    iptables_state,
    probability,
    service_chain_name,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import Cluster

NODE = "node1"


def service(name, cluster_ips, ports, service_type="ClusterIP", namespace="default", status=None, **spec):
    body = {"metadata": {"name": name, "namespace": namespace},
            "spec": dict(spec, type=service_type, clusterIP=cluster_ips[0], clusterIPs=cluster_ips, ports=ports)}
    if status:
        body["status"] = {"loadBalancer": {"ingress": status}}
    return body


def port(number, name="", protocol="TCP", node_port=None):
    item = {"name": name, "port": number, "protocol": protocol, "targetPort": number}
    if node_port:
        item["nodePort"] = node_port
    return item


def ep(address, node="node2", ready=True, **conditions):
    return {"addresses": [address], "conditions": dict(conditions, ready=ready), "nodeName": node}


def endpoint_slice(service_name, endpoints, ports, namespace="default", address_type="IPv4"):
    return {"metadata": {"name": f"{service_name}-{address_type}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": name, "port": number, "protocol": "TCP"} for name, number in ports]}


def chains_of(entries):
    """{(table, chain): rules} of the chains whose content is managed (None: only ensured, with its jumps)."""
    return {(entry["table"], entry["chain"]): entry.get("rules") for entry in entries}


def render(services, slices, family=IPV4, node_ips=("192.0.2.11",), **options):
    ports = Cluster(services, slices).service_ports(NODE, family)
    return chains_of(iptables_chains(ports, family, list(node_ips), **options))


def b32_sha256_16(text):
    """The documented formula, written out independently: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")[:16]


# ---------------------------------------------------------------------------------------------
# Names


def test_names_match_kube_proxy_test_data():
    # pkg/proxy/iptables tests: Service ns1/svc1 port "p80" TCP, endpoint 10.180.0.1:80.
    assert service_chain_name("KUBE-SVC-", "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert service_chain_name("KUBE-EXT-", "ns2/svc2:p80", "tcp") == "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    assert service_chain_name("KUBE-FW-", "ns5/svc5:p80", "tcp") == "KUBE-FW-NUKIZ6OKUXPJNT4C"


@pytest.mark.parametrize("namespace, name, port_name, protocol", [
    ("default", "kubernetes", "https", "TCP"), ("kube-system", "kube-dns", "dns", "UDP"),
    ("a", "unnamed", "", "SCTP"),
])
def test_names_follow_the_documented_formula(namespace, name, port_name, protocol):
    services = [service(name, ["10.96.0.10"], [port(53, port_name, protocol)], namespace=namespace,
                        sessionAffinity="ClientIP", internalTrafficPolicy="Local")]
    slices = [endpoint_slice(name, [ep("10.244.1.5", NODE)], [(port_name, 5353)], namespace=namespace)]
    slices[0]["ports"][0]["protocol"] = protocol
    chains = render(services, slices)
    spn = f"{namespace}/{name}" + (f":{port_name}" if port_name else "")
    lower = protocol.lower()
    svl, sep = "KUBE-SVL-" + b32_sha256_16(spn + lower), "KUBE-SEP-" + b32_sha256_16(spn + lower + "10.244.1.5:5353")
    assert chains[("nat", "KUBE-SERVICES")][0] == (
        f'-m comment --comment "{spn} cluster IP" -m {lower} -p {lower} -d 10.96.0.10 --dport 53 -j {svl}')
    assert ("nat", sep) in chains and len(sep) <= 28


# ---------------------------------------------------------------------------------------------
# kube-proxy's own expected output


def upstream_services():
    """The Services and slices behind kube-proxy's overall-rules test (pkg/proxy/iptables)."""
    services = [
        service("svc1", ["172.30.0.41"], [port(80, "p80")], namespace="ns1"),
        service("svc2", ["172.30.0.42"], [port(80, "p80", node_port=3001)], "LoadBalancer", namespace="ns2",
                status=[{"ip": "1.2.3.4"}], externalIPs=["192.168.99.22"], externalTrafficPolicy="Local",
                healthCheckNodePort=30000),
        service("svc3", ["172.30.0.43"], [port(80, "p80", node_port=3003)], "NodePort", namespace="ns3"),
        service("svc4", ["172.30.0.44"], [port(80, "p80")], namespace="ns4", externalIPs=["192.168.99.33"]),
        service("svc5", ["172.30.0.45"], [port(80, "p80", node_port=3002)], "LoadBalancer", namespace="ns5",
                status=[{"ip": "5.6.7.8"}], loadBalancerSourceRanges=["203.0.113.0/25"]),
        service("svc6", ["172.30.0.46"], [port(80, "p80")], namespace="ns6"),
    ]
    slices = [endpoint_slice(f"svc{n}", [ep(f"10.180.0.{n}")], [("p80", 80)], namespace=f"ns{n}") for n in (1, 2, 3)]
    slices += [endpoint_slice("svc4", [ep("10.180.0.4"), ep("10.180.0.5", NODE)], [("p80", 80)], namespace="ns4"),
               endpoint_slice("svc5", [ep("10.180.0.3")], [("p80", 80)], namespace="ns5")]
    return services, slices


# kube-proxy's TestCleanupLeftovers fixture, which is the overall-rules test's expected output
# (its unique chains; built-in chains' jumps are checked in test_jumps_in_kube_proxy_prepend_order).
UPSTREAM = """
*filter
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j \
REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d \
192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 \
--dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL \
-m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m \
conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate \
RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp \
-p tcp -d 5.6.7.8 --dport 80 -j DROP
*nat
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j \
KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j \
KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j \
KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j \
KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j \
KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j \
KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j \
KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j \
KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j \
KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this \
chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j \
KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s \
10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external \
destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m \
addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j \
KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j \
KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j \
KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by \
KUBE-PROXY-FIREWALL"
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport \
80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random \
--probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport \
80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport \
80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport \
80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport \
80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
"""


def parse_dump(text):
    chains, table = {}, None
    for line in text.strip().splitlines():
        if line.startswith("*"):
            table = line[1:]
        else:
            _verb, chain, rest = line.split(" ", 2)
            chains.setdefault((table, chain), []).append(rest)
    return chains


def test_reproduces_kube_proxy_expected_rules():
    services, slices = upstream_services()
    chains = render(services, slices, node_ips=["192.168.0.2"], cluster_cidr="10.0.0.0/8", random_fully=False)
    non_empty = {key: rules for key, rules in chains.items() if rules}
    assert non_empty == parse_dump(UPSTREAM)
    # Chains kube-proxy declares in every sync exist even when empty.
    assert chains[("filter", "KUBE-SERVICES")] and ("nat", "KUBE-NODEPORTS") in chains


def test_jumps_in_kube_proxy_prepend_order():
    entries = iptables_chains([], IPV4, ["192.0.2.11"])
    jumps = [(e["table"], jump["chain"], jump.get("args"), jump.get("comment"), e["chain"])
             for e in entries for jump in e["jumps"]]
    new = "-m conntrack --ctstate NEW"
    assert jumps == [
        ("filter", "INPUT", new, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
        ("filter", "FORWARD", new, "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
        ("filter", "INPUT", "", "kubernetes health check service ports", "KUBE-NODEPORTS"),
        ("filter", "FORWARD", new, "kubernetes service portals", "KUBE-SERVICES"),
        ("filter", "OUTPUT", new, "kubernetes service portals", "KUBE-SERVICES"),
        ("filter", "FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
        ("filter", "INPUT", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("filter", "OUTPUT", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("filter", "FORWARD", new, "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
        ("nat", "OUTPUT", "", "kubernetes service portals", "KUBE-SERVICES"),
        ("nat", "PREROUTING", "", "kubernetes service portals", "KUBE-SERVICES"),
        ("nat", "POSTROUTING", "", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
        ("filter", "INPUT", "", None, "KUBE-FIREWALL"),
        ("filter", "OUTPUT", "", None, "KUBE-FIREWALL"),
    ]
    assert all(jump["position"] == "first" for e in entries for jump in e["jumps"])


# ---------------------------------------------------------------------------------------------
# Behaviours


def test_probabilities_split_evenly_and_last_rule_always_matches():
    endpoints = [ep(f"10.244.{n}.5") for n in (1, 2, 3, 4)]
    chains = render([service("web", ["10.96.0.20"], [port(80)])], [endpoint_slice("web", endpoints, [("", 8080)])])
    svc = service_chain_name("KUBE-SVC-", "default/web", "tcp")
    rules = chains[("nat", svc)]
    assert [r.split("--probability ")[1].split()[0] if "--probability" in r else None for r in rules] == [
        "0.2500000000", "0.3333333333", "0.5000000000", None]
    assert probability(7) == "0.1428571429"
    # Endpoints in kube-proxy's order: sorted as "ip:port" strings.
    assert [r.split("-> ")[1].split('"')[0] for r in rules] == [f"10.244.{n}.5:8080" for n in (1, 2, 3, 4)]


def test_endpoint_order_is_string_order():
    endpoints = [ep("10.244.0.10"), ep("10.244.0.9"), ep("10.244.0.100")]
    chains = render([service("web", ["10.96.0.20"], [port(80)])], [endpoint_slice("web", endpoints, [("", 80)])])
    rules = chains[("nat", service_chain_name("KUBE-SVC-", "default/web", "tcp"))]
    assert [r.split("-> ")[1].split('"')[0] for r in rules] == ["10.244.0.100:80", "10.244.0.10:80", "10.244.0.9:80"]


def test_no_endpoints_rejects_in_filter_and_writes_no_nat_chains():
    chains = render([service("empty", ["10.96.0.30"], [port(443, "https", node_port=30443)], "NodePort",
                             externalIPs=["198.51.100.5"])], [])
    assert chains[("filter", "KUBE-SERVICES")] == [
        '-m comment --comment "default/empty:https has no endpoints" -m tcp -p tcp -d 10.96.0.30 --dport 443 -j REJECT']
    assert chains[("filter", "KUBE-EXTERNAL-SERVICES")] == [
        '-m comment --comment "default/empty:https has no endpoints" '
        "-m tcp -p tcp -d 198.51.100.5 --dport 443 -j REJECT",
        '-m comment --comment "default/empty:https has no endpoints" -m addrtype --dst-type LOCAL '
        "-m tcp -p tcp --dport 30443 -j REJECT"]
    assert not [key for key in chains if key[1].startswith(("KUBE-SVC-", "KUBE-EXT-", "KUBE-SEP-"))]
    assert chains[("nat", "KUBE-NODEPORTS")] == []


def test_internal_local_policy_uses_svl_with_local_endpoints_only():
    services = [service("loc", ["10.96.0.40"], [port(80)], internalTrafficPolicy="Local"),
                service("none", ["10.96.0.41"], [port(80)], internalTrafficPolicy="Local")]
    slices = [endpoint_slice("loc", [ep("10.244.1.5", NODE), ep("10.244.2.6")], [("", 80)]),
              endpoint_slice("none", [ep("10.244.2.7")], [("", 80)])]
    chains = render(services, slices, cluster_cidr="10.244.0.0/16")
    svl = service_chain_name("KUBE-SVL-", "default/loc", "tcp")
    assert chains[("nat", "KUBE-SERVICES")][0].endswith(f"-j {svl}")
    assert chains[("nat", svl)][1] == (
        f'-m comment --comment "default/loc -> 10.244.1.5:80" -j '
        f'{endpoint_chain_name("default/loc", "tcp", "10.244.1.5:80")}')
    assert len(chains[("nat", svl)]) == 2  # masquerade rule + the one local endpoint
    assert ("nat", service_chain_name("KUBE-SVC-", "default/loc", "tcp")) not in chains
    assert ("nat", endpoint_chain_name("default/loc", "tcp", "10.244.2.6:80")) not in chains
    # No local endpoint: DROP, not REJECT (other nodes have endpoints).
    assert chains[("filter", "KUBE-SERVICES")] == [
        '-m comment --comment "default/none has no local endpoints" -m tcp -p tcp -d 10.96.0.41 --dport 80 -j DROP']


def test_external_local_policy_ext_chain_short_circuits_and_goes_to_svl():
    services = [service("lb", ["10.96.0.50"], [port(80, node_port=30080)], "LoadBalancer",
                        status=[{"ip": "203.0.113.10"}], externalTrafficPolicy="Local", healthCheckNodePort=32000)]
    slices = [endpoint_slice("lb", [ep("10.244.1.5", NODE), ep("10.244.2.6")], [("", 8080)])]
    chains = render(services, slices, cluster_cidr="10.244.0.0/16")
    name, svc = "default/lb", service_chain_name("KUBE-SVC-", "default/lb", "tcp")
    ext, svl = service_chain_name("KUBE-EXT-", name, "tcp"), service_chain_name("KUBE-SVL-", name, "tcp")
    assert chains[("nat", ext)] == [
        f'-m comment --comment "pod traffic for {name} external destinations" -s 10.244.0.0/16 -j {svc}',
        f'-m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
        "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
        f'-m comment --comment "route LOCAL traffic for {name} external destinations" '
        f"-m addrtype --src-type LOCAL -j {svc}",
        f"-j {svl}"]
    assert len(chains[("nat", svl)]) == 1 and len(chains[("nat", svc)]) == 3  # masq + 2 endpoints
    # Both endpoints are reachable (cluster policy for the ClusterIP), each with its SEP chain.
    for address in ("10.244.1.5", "10.244.2.6"):
        assert ("nat", endpoint_chain_name(name, "tcp", f"{address}:8080")) in chains
    assert chains[("nat", "KUBE-NODEPORTS")] == [f"-m comment --comment {name} -m tcp -p tcp --dport 30080 -j {ext}"]
    assert chains[("filter", "KUBE-NODEPORTS")] == [
        f'-m comment --comment "{name} health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT']
    assert chains[("filter", "KUBE-EXTERNAL-SERVICES")] == []


def test_session_affinity_recent_checks_before_split_and_set_in_sep():
    services = [service("sticky", ["10.96.0.60"], [port(80)], sessionAffinity="ClientIP",
                        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})]
    slices = [endpoint_slice("sticky", [ep("10.244.1.5"), ep("10.244.2.6")], [("", 80)])]
    chains = render(services, slices)
    name = "default/sticky"
    sep1 = endpoint_chain_name(name, "tcp", "10.244.1.5:80")
    sep2 = endpoint_chain_name(name, "tcp", "10.244.2.6:80")
    to1, to2 = f'-m comment --comment "{name} -> 10.244.1.5:80"', f'-m comment --comment "{name} -> 10.244.2.6:80"'
    assert chains[("nat", service_chain_name("KUBE-SVC-", name, "tcp"))] == [
        f"{to1} -m recent --name {sep1} --rcheck --seconds 60 --reap -j {sep1}",
        f"{to2} -m recent --name {sep2} --rcheck --seconds 60 --reap -j {sep2}",
        f"{to1} -m statistic --mode random --probability 0.5000000000 -j {sep1}",
        f"{to2} -j {sep2}"]
    assert chains[("nat", sep1)] == [
        f"-m comment --comment {name} -s 10.244.1.5 -j KUBE-MARK-MASQ",
        f"-m comment --comment {name} -m recent --name {sep1} --set "
        "-m tcp -p tcp -j DNAT --to-destination 10.244.1.5:80"]


def test_masquerade_options_and_nodeport_addresses():
    services = [service("web", ["10.96.0.20"], [port(80, node_port=30080)], "NodePort")]
    slices = [endpoint_slice("web", [ep("10.244.2.6")], [("", 80)])]
    chains = render(services, slices, masquerade_bit=0, random_fully=True, masquerade_all=True,
                    nodeport_addresses=["192.0.2.11", "2001:db8::1"], localhost_nodeports=False,
                    conntrack_tcp_be_liberal=True)
    assert chains[("nat", "KUBE-MARK-MASQ")] == ["-j MARK --or-mark 0x1"]
    assert chains[("nat", "KUBE-POSTROUTING")][2].endswith("-j MASQUERADE --random-fully")
    svc = chains[("nat", service_chain_name("KUBE-SVC-", "default/web", "tcp"))]
    assert svc[0] == ('-m comment --comment "default/web cluster IP" '
                      "-m tcp -p tcp -d 10.96.0.20 --dport 80 -j KUBE-MARK-MASQ")
    assert chains[("nat", "KUBE-SERVICES")][-1] == (
        '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" '
        "-d 192.0.2.11 -j KUBE-NODEPORTS")
    # kubelet's chain: kube-proxy ensures it and its jumps, its content stays whatever kubelet wrote
    assert chains[("filter", "KUBE-FIREWALL")] is None
    assert chains[("filter", "KUBE-FORWARD")][0].startswith('-m comment --comment "kubernetes forwarding rules"')
    no_detector = render(services, slices)
    assert len(no_detector[("nat", service_chain_name("KUBE-SVC-", "default/web", "tcp"))]) == 1


def test_large_cluster_mode_drops_endpoint_comments():
    endpoints = [ep(f"10.244.{n // 250}.{n % 250 + 1}") for n in range(1001)]
    chains = render([service("big", ["10.96.0.70"], [port(80)])], [endpoint_slice("big", endpoints, [("", 80)])])
    svc = chains[("nat", service_chain_name("KUBE-SVC-", "default/big", "tcp"))]
    assert len(svc) == 1001 and "comment" not in svc[0] and svc[0].startswith("-m statistic")
    sep = chains[("nat", endpoint_chain_name("default/big", "tcp", "10.244.0.1:80"))]
    assert sep == ["-s 10.244.0.1 -j KUBE-MARK-MASQ", "-m tcp -p tcp -j DNAT --to-destination 10.244.0.1:80"]


def test_dual_stack_state_splits_families():
    services = [service("dual", ["10.96.0.80", "fd00:10:96::80"], [port(80, node_port=30080)], "NodePort",
                        ipFamilies=["IPv4", "IPv6"])]
    slices = [endpoint_slice("dual", [ep("10.244.1.5")], [("", 80)]),
              endpoint_slice("dual", [ep("fd00:10:244:1::5")], [("", 80)], address_type="IPv6")]
    state = iptables_state(services, slices, NODE, ["192.0.2.11", "2001:db8::11"],
                           cluster_cidr="10.244.0.0/16,fd00:10:244::/56")
    assert sorted(state) == ["ipv4", "ipv6"]
    v4, v6 = chains_of(state["ipv4"]), chains_of(state["ipv6"])
    svc = service_chain_name("KUBE-SVC-", "default/dual", "tcp")
    sep6 = endpoint_chain_name("default/dual", "tcp", "[fd00:10:244:1::5]:80")
    assert v6[("nat", sep6)] == [
        "-m comment --comment default/dual -s fd00:10:244:1::5 -j KUBE-MARK-MASQ",
        "-m comment --comment default/dual -m tcp -p tcp -j DNAT --to-destination [fd00:10:244:1::5]:80"]
    assert v6[("nat", svc)][0].endswith("-d fd00:10:96::80 --dport 80 ! -s fd00:10:244::/56 -j KUBE-MARK-MASQ")
    assert v4[("nat", svc)][0].endswith("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")
    assert v6[("nat", "KUBE-SERVICES")][-1].endswith("-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS")
    assert v6[("filter", "KUBE-FIREWALL")] is None and v4[("filter", "KUBE-FIREWALL")]
    firewall = next(entry for entry in state["ipv6"] if entry["chain"] == "KUBE-FIREWALL")
    assert [jump["chain"] for jump in firewall["jumps"]] == ["INPUT", "OUTPUT"] and "rules" not in firewall
    assert iptables_state([], [], NODE, ["192.0.2.11"]).keys() == {"ipv4"}


def test_node_port_cidrs_limit_each_family_on_its_own():
    """kube-proxy's nodePortAddresses per proxier: IPv4 limited to one CIDR (the node's addresses in
    it, and 127.0.0.1 where a CIDR holds it); IPv6 without a CIDR of its own takes every address."""
    services = [service("dual", ["10.96.0.80", "fd00:10:96::80"], [port(80, node_port=30080)], "NodePort",
                        ipFamilies=["IPv4", "IPv6"])]
    last = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" '

    def nodeport_rules(cidrs, addresses=None, localhost=True):
        state = iptables_state(services, [], NODE, ["192.0.2.11", "2001:db8::11"], node_port_cidrs=cidrs,
                               node_addresses=addresses, localhost_nodeports=localhost)
        return {family: [rule for rule in chains_of(chains)[("nat", "KUBE-SERVICES")] if "KUBE-NODEPORTS" in rule]
                for family, chains in state.items()}

    rules = nodeport_rules(["192.0.2.0/24"], ["192.0.2.11", "192.0.2.12", "198.51.100.1", "2001:db8::11"])
    assert rules["ipv4"] == [last + "-d 192.0.2.11 -j KUBE-NODEPORTS", last + "-d 192.0.2.12 -j KUBE-NODEPORTS"]
    assert rules["ipv6"] == [last + "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"]
    # the node IPs when the node's addresses are not given; loopback where a CIDR holds it
    rules = nodeport_rules(["192.0.2.11/32", "127.0.0.0/8", "2001:db8::/64"])
    assert rules["ipv4"] == [last + "-d 192.0.2.11 -j KUBE-NODEPORTS", last + "-d 127.0.0.1 -j KUBE-NODEPORTS"]
    assert rules["ipv6"] == [last + "-d 2001:db8::11 -j KUBE-NODEPORTS"]
    assert nodeport_rules(["192.0.2.11/32", "127.0.0.0/8"], localhost=False)["ipv4"] == [
        last + "-d 192.0.2.11 -j KUBE-NODEPORTS"]
    # a zero CIDR among them, or none: every local address
    assert nodeport_rules(["192.0.2.0/24", "0.0.0.0/0"])["ipv4"] == [
        last + "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"]
    assert nodeport_rules([])["ipv4"] == [last + "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"]


def test_source_ranges_admit_the_node_itself_through_the_vip():
    services = [service("fw", ["10.96.0.90"], [port(80)], "LoadBalancer", status=[{"ip": "203.0.113.20"}],
                        loadBalancerSourceRanges=["192.0.2.0/24", "2001:db8::/64"])]
    slices = [endpoint_slice("fw", [ep("10.244.2.6")], [("", 80)])]
    chains = render(services, slices)
    name = "default/fw"
    ext = service_chain_name("KUBE-EXT-", name, "tcp")
    assert chains[("nat", service_chain_name("KUBE-FW-", name, "tcp"))] == [
        f'-m comment --comment "{name} loadbalancer IP" -s 192.0.2.0/24 -j {ext}',
        f'-m comment --comment "{name} loadbalancer IP" -s 203.0.113.20 -j {ext}',
        f'-m comment --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"']


@pytest.mark.parametrize("kwargs, message", [
    ({"node_ips": ["nope"]}, "node_ips"),
    ({"cluster_cidr": "fd00::/48"}, "not an IPv4 CIDR"),
    ({"cluster_cidr": "bogus"}, "not a CIDR"),
    ({"masquerade_bit": 32}, "masquerade_bit"),
])
def test_invalid_options_are_refused(kwargs, message):
    args = dict({"node_ips": ["192.0.2.11"]}, **kwargs)
    with pytest.raises(ValueError, match=message):
        iptables_chains([], IPV4, **args)


def test_many_nodes_share_the_chains_that_are_the_same_on_every_node():
    """With a cluster's memo, each node's list equals the list rendered without one (as a set of chains,
    each with its rules in order, and every shared chain's rules in the same order); the chains of ports
    the same on every node come last and are the very same items for every node, so they are built,
    encoded and compressed once."""
    services, slices = upstream_services()
    cluster = Cluster(services, slices)
    memo = {}
    nodes = {"node1": ["192.168.0.2"], "node2": ["192.168.0.3"], "node3": ["192.168.0.4"]}
    rendered = {}
    for name, node_ips in nodes.items():
        ports = cluster.service_ports(name, IPV4)
        alone = iptables_chains(ports, IPV4, node_ips, cluster_cidr="10.0.0.0/8")
        shared = iptables_chains(ports, IPV4, node_ips, cluster_cidr="10.0.0.0/8", memo=memo)
        assert chains_of(shared) == chains_of(alone), name
        assert [(e["table"], e["chain"], e["jumps"]) for e in shared if e["jumps"]] == \
            [(e["table"], e["chain"], e["jumps"]) for e in alone if e["jumps"]]
        rendered[name] = shared
    first, *others = rendered.values()
    tail = first[first.head:]
    # svc1, svc3, svc4 and svc6 are the same everywhere (svc6 has no chain of its own); svc2 (Local) and svc5
    # (source ranges) are not
    assert sorted(entry["chain"] for entry in tail) == sorted(
        [service_chain_name("KUBE-SVC-", f"ns{n}/svc{n}:p80", "tcp") for n in (1, 3, 4)]
        + [service_chain_name("KUBE-EXT-", "ns3/svc3:p80", "tcp"), service_chain_name("KUBE-EXT-", "ns4/svc4:p80", "tcp")]
        + [endpoint_chain_name(f"ns{n}/svc{n}:p80", "tcp", f"10.180.0.{n}:80") for n in (1, 3, 4)]
        + [endpoint_chain_name("ns4/svc4:p80", "tcp", "10.180.0.5:80")])
    assert not any(entry["chain"].endswith(service_chain_name("", "ns2/svc2:p80", "tcp")) for entry in tail)
    assert first.shared() is first.run and first.run.items == tail
    for other in others:
        assert other.run is first.run and all(mine is theirs for mine, theirs in zip(other[other.head:], tail))
    # other options make other rules: not the first run
    elsewhere = iptables_chains(cluster.service_ports("node1", IPV4), IPV4, ["192.168.0.2"], memo=memo)
    assert elsewhere.run is not first.run
    assert chains_of(elsewhere) == chains_of(iptables_chains(cluster.service_ports("node1", IPV4), IPV4,
                                                             ["192.168.0.2"]))
