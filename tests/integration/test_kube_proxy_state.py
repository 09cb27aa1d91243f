# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""kubeipvs.node.kube_proxy_state reading Services and EndpointSlices from the API test server."""

from __future__ import annotations

from kube_fixtures import cluster  # noqa: F401  # pylint: disable=unused-import

SERVICES = 620  # more than one page of the client's list (500), so pagination is exercised


def seed(cluster):
    for index in range(SERVICES):
        name = f"svc{index}"
        cluster.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"type": "NodePort" if index == 0 else "ClusterIP",
                              "clusterIP": f"10.96.{index // 250}.{index % 250 + 1}",
                              "clusterIPs": [f"10.96.{index // 250}.{index % 250 + 1}"],
                              "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                         **({"nodePort": 30080} if index == 0 else {})}]}})
        cluster.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-abcde", "namespace": "default",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv4",
                     "endpoints": [{"addresses": [f"10.244.{index // 250 + 1}.{index % 250 + 1}"],
                                    "conditions": {"ready": True}, "nodeName": "node1" if index % 2 else "node2"}],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})


def test_state_of_a_node_from_the_api(cluster):
    seed(cluster)
    default_ips, explicit, check = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1"}),
        ("kube_proxy_state", {"node_name": "node1", "node_ips": ["198.51.100.1", "2001:db8::1"], "scheduler": "wrr"}),
        ("kube_proxy_state", {"node_name": "node1", "_check": True}),
    ])
    assert not default_ips["changed"] and default_ips["node_ips"] == ["192.0.2.11"], default_ips
    assert default_ips["counts"] == {"services_read": SERVICES, "endpoint_slices_read": SERVICES,
                                     "virtual_servers": SERVICES + 1, "real_servers": SERVICES + 1,
                                     "addresses": SERVICES}
    services = default_ips["ipvs_sync"]["services"]
    assert {"protocol": "tcp", "address": "192.0.2.11", "port": 30080, "family": "inet", "scheduler": "rr",
            "real_servers": [{"address": "10.244.1.1", "port": 8080, "weight": 1, "forwarding": "nat"}]} in services
    assert len(default_ips["ipsets"]["KUBE-CLUSTER-IP"]) == SERVICES
    assert len(default_ips["ipsets"]["KUBE-LOOP-BACK"]) == SERVICES // 2  # the endpoints on node1
    assert default_ips["ipsets"]["KUBE-NODE-PORT-TCP"] == ["30080"]
    assert default_ips["dummy_interface"]["addresses"][0] == "10.96.0.1"
    assert explicit["node_ips"] == ["198.51.100.1", "2001:db8::1"]
    assert {s["scheduler"] for s in explicit["ipvs_sync"]["services"]} == {"wrr"}
    assert "KUBE-6-NODE-PORT-TCP" in explicit["ipsets"]
    assert check["ipvs_sync"] == default_ips["ipvs_sync"]
    assert not cluster.writes()


def test_unknown_node_and_bad_node_ip(cluster):
    unknown, bad = cluster.modules([
        ("kube_proxy_state", {"node_name": "node9"}),
        ("kube_proxy_state", {"node_name": "node1", "node_ips": ["192.0.2.300"]}),
    ])
    assert unknown["failed"] and "node node9 not found" in unknown["msg"]
    assert bad["failed"] and "192.0.2.300 is not an IP address" in bad["msg"]


def varied_services(cluster):
    """One of each kind of Service kube-proxy's ipsets care about, IPv4 and IPv6."""
    def add_service(name, spec, status=None):
        cluster.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": spec, **({"status": status} if status else {})})

    def add_slice(name, address_type, endpoints, ports):
        cluster.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-{address_type.lower()}", "namespace": "default",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": address_type,
                     "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                                   for ip, node in endpoints],
                     "ports": [{"name": "", "port": number, "protocol": protocol} for number, protocol in ports]})

    add_service("lb", {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
                       "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                       "loadBalancerSourceRanges": ["192.0.2.0/24", "198.51.100.7/32"],
                       "ports": [{"port": 443, "protocol": "TCP", "nodePort": 30443}]},
                {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}})
    add_slice("lb", "IPv4", [("10.244.1.5", "node1"), ("10.244.2.6", "node2")], [(8443, "TCP")])
    add_service("dns", {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                        "externalIPs": ["198.51.100.20"],
                        "ports": [{"name": "", "port": 53, "protocol": "UDP"}]})
    add_slice("dns", "IPv4", [("10.244.1.7", "node1")], [(53, "UDP")])
    add_service("sctp", {"type": "NodePort", "clusterIP": "10.96.0.90", "clusterIPs": ["10.96.0.90"],
                         "externalTrafficPolicy": "Local",
                         "ports": [{"port": 9000, "protocol": "SCTP", "nodePort": 30900}]})
    add_service("dual", {"type": "NodePort", "clusterIP": "10.96.0.100",
                         "clusterIPs": ["10.96.0.100", "fd00:10:96::100"], "ipFamilies": ["IPv4", "IPv6"],
                         "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30100}]})
    add_slice("dual", "IPv6", [("fd00:10:244:1::5", "node1")], [(8080, "TCP")])


def test_ipsets_load_into_the_kernel_as_computed(cluster, netns):
    """Every computed set goes through kubeipvs.node.ipset into a real kernel's ip_set unchanged."""
    varied_services(cluster)
    state = cluster.module("kube_proxy_state", node_name="node1", node_ips=["192.0.2.11", "2001:db8::11"])
    loaded = 0
    for name, members in sorted(state["ipsets"].items()):
        if not members:
            continue
        set_type = state["ipset_types"][name]
        args = {"name": name, "type": set_type, "members": members, "exclusive": True}
        if set_type == "bitmap:port":
            args["range"] = "0-65535"
        else:
            args["family"] = "inet6" if name.startswith("KUBE-6-") else "inet"
        result = netns.module("ipset", **args)
        assert not result.get("failed") and result["changed"], (name, result)
        saved = {line.split(" ", 2)[2] for line in netns.sh(f"ipset save {name}").splitlines()
                 if line.startswith("add ")}
        assert saved == set(members), name
        loaded += 1
    assert loaded >= 14, state["ipsets"]


def test_state_in_iptables_and_nftables_mode(cluster):
    seed(cluster)
    ipvs, iptables, nftables, bad_bit = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1"}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "iptables", "cluster_cidr": "10.244.0.0/16"}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "masquerade_bit": 15}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "masquerade_bit": 32}),
    ])
    # The mode-independent facts are the same whatever the mode.
    assert ipvs["mode"] == "ipvs" and iptables["mode"] == "iptables" and nftables["mode"] == "nftables"
    assert len(ipvs["cluster_ip_ports"]) == SERVICES and "tcp/10.96.0.1:80" in ipvs["cluster_ip_ports"]
    assert iptables["cluster_ip_ports"] == nftables["cluster_ip_ports"] == ipvs["cluster_ip_ports"]
    assert ipvs["kubernetes_version"].startswith("v1.")
    # Each mode returns its own module input only.
    assert "iptables_chain" not in ipvs and "nftables_tables" not in ipvs
    assert "ipvs_sync" not in iptables and "nftables_tables" not in iptables
    assert "ipvs_sync" not in nftables and "iptables_chain" not in nftables
    chains = {(c["table"], c["chain"]): c for c in iptables["iptables_chain"]["ipv4"]}
    assert sum(1 for table, name in chains if name.startswith("KUBE-SVC-")) == SERVICES
    services = chains[("nat", "KUBE-SERVICES")]["rules"]
    assert any("-d 10.96.0.1 " in rule and "--dport 80" in rule for rule in services)
    assert any("! -s 10.244.0.0/16" in rule for chain in chains.values() for rule in chain.get("rules") or [])
    [table] = nftables["nftables_tables"]
    assert (table["family"], table["name"]) == ("ip", "kube-proxy")
    assert "10.96.0.1 . tcp . 80" in table["content"] and "0x8000" in table["content"]
    assert bad_bit["failed"] and "masquerade_bit must be 0-31" in bad_bit["msg"]
    assert not cluster.writes()
