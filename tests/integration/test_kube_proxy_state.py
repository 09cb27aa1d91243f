# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.kube_proxy_state reading Services and EndpointSlices from the real API server.

The Services are created through the API (ClusterIPs from the cluster's 10.96.0.0/12, chosen clear
of the ones the cluster allocated); their EndpointSlices are written as a controller would, since
Services without a selector get none from the EndpointSlice controller. The cluster's own
``default/kubernetes`` Service (10.96.0.1:443, backed by the API server's address) is there too and
counts like any other."""

from __future__ import annotations

import gzip
import json
import secrets
import sys

import pytest
from kube_cluster import READER_TOKEN
from kube_fixtures import ANSIBLE_PLAYBOOK, lab_cluster, run_ansible, seed_kubeadm_kube_proxy

SERVICES = 620  # more than one page of the client's list (500), so pagination is exercised
KUBERNETES = "10.96.0.1"  # the default/kubernetes Service


def service_ip(index):
    return f"10.100.{index // 250}.{index % 250 + 1}"


def seed(cluster):
    objects = []
    for index in range(SERVICES):
        name = f"svc{index}"
        objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                        "spec": {"type": "NodePort" if index == 0 else "ClusterIP",
                                 "clusterIP": service_ip(index), "clusterIPs": [service_ip(index)],
                                 "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                            **({"nodePort": 30080} if index == 0 else {})}]}})
        objects.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": f"{name}-abcde", "namespace": "default",
                                     "labels": {"kubernetes.io/service-name": name}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": [f"10.244.{index // 250 + 1}.{index % 250 + 1}"],
                                       "conditions": {"ready": True}, "nodeName": "node1" if index % 2 else "node2"}],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    cluster.create_all(objects)


def test_state_of_a_node_from_the_api(cluster):
    seed(cluster)
    node_ip = cluster.node_ip("node1")
    default_ips, explicit, check = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1"}),
        ("kube_proxy_state", {"node_name": "node1", "node_ips": ["198.51.100.1", "2001:db8::1"], "scheduler": "wrr"}),
        ("kube_proxy_state", {"node_name": "node1", "_check": True}),
    ])
    # the Node's InternalIPs (IPv4 and IPv6), as its runner registered them
    assert not default_ips["changed"] and default_ips["node_ips"] == cluster.node_ips("node1"), default_ips
    assert default_ips["counts"] == {"services_read": SERVICES + 1, "endpoint_slices_read": SERVICES + 1,
                                     "virtual_servers": SERVICES + 2, "real_servers": SERVICES + 2,
                                     "addresses": SERVICES + 1, "cluster_ip_ports": SERVICES + 1}
    assert len(default_ips["cluster_ip_ports"]) == SERVICES + 1
    services = default_ips["ipvs_sync"]["services"]
    assert {"protocol": "tcp", "address": node_ip, "port": 30080, "family": "inet", "scheduler": "rr",
            "real_servers": [{"address": "10.244.1.1", "port": 8080, "weight": 1, "forwarding": "nat"}]} in services
    # the API server behind default/kubernetes, at the address it advertises
    api_port = int(cluster.server.rsplit(":", 1)[1])
    assert {"protocol": "tcp", "address": KUBERNETES, "port": 443, "family": "inet", "scheduler": "rr",
            "real_servers": [{"address": cluster.kube.gateway, "port": api_port, "weight": 1,
                              "forwarding": "nat"}]} in services
    assert len(default_ips["ipsets"]["KUBE-CLUSTER-IP"]) == SERVICES + 1
    assert len(default_ips["ipsets"]["KUBE-LOOP-BACK"]) == SERVICES // 2  # the endpoints on node1
    assert default_ips["ipsets"]["KUBE-NODE-PORT-TCP"] == ["30080"]
    assert default_ips["dummy_interface"]["addresses"][0] == KUBERNETES
    assert explicit["node_ips"] == ["198.51.100.1", "2001:db8::1"]
    assert {s["scheduler"] for s in explicit["ipvs_sync"]["services"]} == {"wrr"}
    assert "KUBE-6-NODE-PORT-TCP" in explicit["ipsets"]
    assert check["ipvs_sync"] == default_ips["ipvs_sync"]
    assert not cluster.writes()
    # each run read the Services and EndpointSlices in pages of 500
    lists = [r.uri for r in cluster.requests() if r.verb == "list"]
    for collection in ("/api/v1/services?", "/apis/discovery.k8s.io/v1/endpointslices?"):
        pages = [uri for uri in lists if uri.startswith(collection)]
        assert len(pages) == 6 and sum("continue=" in uri for uri in pages) == 3, pages
        assert all("limit=500" in uri for uri in pages)


def test_unknown_node_and_bad_node_ip(cluster):
    unknown, bad = cluster.modules([
        ("kube_proxy_state", {"node_name": "node9"}),
        ("kube_proxy_state", {"node_name": "node1", "node_ips": ["192.0.2.300"]}),
    ])
    assert unknown["failed"] and "node node9 not found" in unknown["msg"]
    assert bad["failed"] and "192.0.2.300 is not an IP address" in bad["msg"]
    assert not cluster.writes()


def varied_services(cluster):
    """One of each kind of Service kube-proxy's ipsets care about, IPv4 and IPv6."""
    def add_service(name, spec, status=None):
        cluster.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": spec})
        if status:  # what a load-balancer controller writes, through the status subresource
            cluster.call("PATCH", f"/api/v1/namespaces/default/services/{name}/status", {"status": status},
                         "application/merge-patch+json")

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
    add_service("dual", {"type": "NodePort", "clusterIP": "10.96.0.100", "ipFamilyPolicy": "RequireDualStack",
                         "clusterIPs": ["10.96.0.100", "fd00:10:96::100"], "ipFamilies": ["IPv4", "IPv6"],
                         "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30100}]})
    add_slice("dual", "IPv6", [("fd00:10:244:1::5", "node1")], [(8080, "TCP")])


def test_ipsets_load_into_the_kernel_as_computed(cluster, netns):
    """Every computed set goes through kubeipvs.node.ipset into a real kernel's ip_set unchanged."""
    varied_services(cluster)
    state = cluster.module("kube_proxy_state", node_name="node1", node_ips=["192.0.2.11", "2001:db8::11"])
    assert state["counts"]["services_read"] == 5, state["counts"]  # the four above and default/kubernetes
    assert f"{KUBERNETES},tcp:443" in state["ipsets"]["KUBE-CLUSTER-IP"]
    assert "fd00:10:96::100,tcp:80" in state["ipsets"]["KUBE-6-CLUSTER-IP"]
    assert state["ipsets"]["KUBE-LOAD-BALANCER"] == ["203.0.113.10,tcp:443"]
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
    addresses = [cluster.node_ip("node1"), "198.51.100.20"]
    ipvs, ipvs_primary, iptables, nftables, bad_bit, primary, bad_cidr = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1", "node_port_addresses": addresses}),
        ("kube_proxy_state", {"node_name": "node1", "node_port_addresses": addresses, "node_port_cidrs": ["primary"]}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "iptables", "cluster_cidr": "10.244.0.0/16"}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "masquerade_bit": 15}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "masquerade_bit": 32}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "iptables", "node_port_cidrs": ["primary"]}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "iptables", "node_port_cidrs": ["10.0.0.0/8", "eth0"]}),
    ])
    # The mode-independent facts are the same whatever the mode.
    assert ipvs["mode"] == "ipvs" and iptables["mode"] == "iptables" and nftables["mode"] == "nftables"
    assert len(ipvs["cluster_ip_ports"]) == SERVICES + 1
    assert {"tcp/10.100.0.1:80", f"tcp/{KUBERNETES}:443"} <= set(ipvs["cluster_ip_ports"])
    assert iptables["cluster_ip_ports"] == nftables["cluster_ip_ports"] == ipvs["cluster_ip_ports"]
    assert ipvs["kubernetes_version"] == f"v{lab_cluster.version()}"
    # Each mode returns its own module input only; IPVS mode's iptables rules match its ipsets.
    assert "nftables_tables" not in ipvs
    ipvs_chains = {(c["table"], c["chain"]): c["rules"] for c in ipvs["iptables_chain"]["ipv4"]}
    assert len(ipvs_chains) == 11 and not any(name.startswith("KUBE-SVC-") for _table, name in ipvs_chains)
    assert "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in ipvs_chains[("nat", "KUBE-SERVICES")]
    assert "ipvs_sync" not in iptables and "nftables_tables" not in iptables
    assert "ipvs_sync" not in nftables and "iptables_chain" not in nftables
    chains = {(c["table"], c["chain"]): c for c in iptables["iptables_chain"]["ipv4"]}
    assert sum(1 for table, name in chains if name.startswith("KUBE-SVC-")) == SERVICES + 1
    services = chains[("nat", "KUBE-SERVICES")]["rules"]
    assert any("-d 10.100.0.1 " in rule and "--dport 80" in rule for rule in services)
    assert any(f"-d {KUBERNETES} " in rule and "--dport 443" in rule for rule in services)
    assert any("! -s 10.244.0.0/16" in rule for chain in chains.values() for rule in chain.get("rules") or [])
    # the Node has an IPv6 InternalIP too: kube-proxy's IPv6 proxier writes an ip6 table
    table, table6 = nftables["nftables_tables"]
    assert (table["family"], table["name"], table6["family"], table6["name"]) == ("ip", "kube-proxy", "ip6", "kube-proxy")
    assert "10.100.0.1 . tcp . 80" in table["content"] and "0x8000" in table["content"]
    assert cluster.node_ips("node1")[1] in table6["content"]  # its NodePort address
    assert bad_bit["failed"] and "masquerade_bit must be 0-31" in bad_bit["msg"]
    # localhost NodePorts by default: kube-proxy's route_localnet; none on the node IP alone ("primary")
    assert iptables["sysctls"] == {"net.ipv4.conf.all.route_localnet": 1} and primary["sysctls"] == {}
    (services,) = [chain["rules"] for chain in primary["iptables_chain"]["ipv4"]
                   if (chain["table"], chain["chain"]) == ("nat", "KUBE-SERVICES")]
    nodeports = [rule for rule in services if "KUBE-NODEPORTS" in rule]
    assert [rule.split(" -d ")[1] for rule in nodeports] == [f"{cluster.node_ip('node1')} -j KUBE-NODEPORTS"]
    assert bad_cidr["failed"] and "node_port_cidrs[1]: 'eth0' is not a CIDR nor a keyword" in bad_cidr["msg"]
    # IPVS mode: the NodePort on every node address, or on the node IP alone ("primary")
    node_ports = [sorted(s["address"] for s in state["ipvs_sync"]["services"] if s["port"] == 30080)
                  for state in (ipvs, ipvs_primary)]
    assert node_ports == [sorted(addresses), [cluster.node_ip("node1")]], node_ports
    assert not cluster.writes()


def test_service_cidrs_from_the_cluster_or_given_and_a_clear_error_without_the_right(cluster):
    """nftables mode reads the cluster's ServiceCIDR objects, as kube-proxy does, for its drop of
    unallocated ClusterIPs; given ``service_cidrs`` are used instead (nothing listed); a user who may
    read Services, EndpointSlices and Nodes but not ServiceCIDRs is told what to grant."""
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "test-state-reader"},
                 "rules": [{"apiGroups": [""], "resources": ["services", "nodes"], "verbs": ["get", "list"]},
                           {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "test-state-reader"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-state-reader"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "reader"}]})
    reader = cluster.kubeconfig_for(READER_TOKEN)
    from_api, given, denied, denied_but_given = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables"}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "service_cidrs": ["10.96.0.0/16"]}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "kubeconfig": reader}),
        ("kube_proxy_state", {"node_name": "node1", "mode": "nftables", "kubeconfig": reader, "service_cidrs": []}),
    ])
    drop = 'drop comment "Drop traffic to unallocated ClusterIPs"'
    assert f"ip daddr {{ 10.96.0.0/12 }} {drop}" in from_api["nftables_tables"][0]["content"], from_api
    assert f"ip daddr {{ 10.96.0.0/16 }} {drop}" in given["nftables_tables"][0]["content"], given
    assert denied.get("failed") and "cannot list ServiceCIDRs (403 Forbidden); grant list on servicecidrs or pass " \
                                    "service_cidrs" in denied["msg"], denied
    assert not denied_but_given.get("failed") and drop not in denied_but_given["nftables_tables"][0]["content"]
    servicecidrs = [request for request in cluster.requests() + cluster.requests("reader")
                    if "/servicecidrs" in request.uri]
    assert [(request.verb, request.code) for request in servicecidrs] == [("list", 200), ("list", 403)], servicecidrs
    assert not cluster.writes()


def test_which_kube_proxy_is_rendered_for(cluster):
    """The release comes from the option, else the kube-proxy DaemonSet's image tag, else the API
    server's version; a release outside those rendered exactly is rendered as the nearest one, with
    a warning; a bad version fails before anything is read."""
    server = lab_cluster.version()
    web = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.80", "clusterIPs": ["10.96.0.80"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
    cluster.add(web)
    cluster.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "web-one", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.2.8"], "conditions": {"ready": True},
                                                       "nodeName": "node2"}],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    nft = {"node_name": "node1", "mode": "nftables"}
    (from_server,) = cluster.modules([("kube_proxy_state", nft)])
    seed_kubeadm_kube_proxy(cluster, run=False, image="registry.example:5000/kube-proxy:v1.35.4@sha256:" + "a" * 64)
    from_daemonset, given, too_old, elsewhere, bad = cluster.modules([
        ("kube_proxy_state", nft),
        ("kube_proxy_state", dict(nft, kube_proxy_version="v1.36.3")),
        ("kube_proxy_state", dict(nft, kube_proxy_version="1.31")),
        ("kube_proxy_state", dict(nft, daemonset_name="other-proxy")),
        ("kube_proxy_state", dict(nft, kube_proxy_version="latest")),
    ])
    assert (from_server["kube_proxy_version"], from_server["kube_proxy_version_source"]) == (server, "server")
    assert (from_daemonset["kube_proxy_version"], from_daemonset["kube_proxy_version_source"]) == ("1.35.4", "daemonset")
    assert (given["kube_proxy_version"], given["kube_proxy_version_source"]) == ("1.36.3", "option")
    assert elsewhere["kube_proxy_version_source"] == "server"  # no such DaemonSet

    def dnat(state):
        return [line.strip() for line in state["nftables_tables"][0]["content"].splitlines() if " dnat " in line
                and "10.244.2.8" in line]
    assert dnat(from_server) == ["meta l4proto tcp dnat to 10.244.2.8:8080"]  # v1.37: one endpoint, a plain DNAT
    assert dnat(given) == ["meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.244.2.8 . 8080 }"]
    assert "chain mark-for-masquerade {" in from_daemonset["nftables_tables"][0]["content"]  # v1.35's design
    assert "chain mark-for-masquerade {" in too_old["nftables_tables"][0]["content"]  # v1.31 is rendered as v1.34
    assert any("v1.31 (option) is outside the releases rendered exactly (v1.34 to v1.37); rendering it as v1.34" in w
               for w in too_old.get("warnings", [])), too_old
    assert not from_daemonset.get("warnings"), from_daemonset
    assert bad["failed"] and "kube_proxy_version 'latest' is not a Kubernetes version" in bad["msg"], bad
    assert not cluster.writes()


def gzip_json(path):
    with gzip.open(path) as handle:
        return json.load(handle)


def paths_in(value):
    if isinstance(value, dict):
        return [path for key, item in value.items() if key not in ("family", "name") for path in paths_in(item)]
    if isinstance(value, list):
        return [path for item in value for path in paths_in(item)]
    return [value]


def netns_playbook(netns, tmp_path, tasks, *options):
    """``tasks`` run by ansible-playbook inside ``netns`` (no API there: only state files); their results."""
    playbook = tmp_path / f"netns-play-{secrets.token_hex(4)}.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    command = ["ip", "netns", "exec", netns.name, str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local",
               str(playbook), "-e", json.dumps({"ansible_python_interpreter": sys.executable}), *options]
    return run_ansible(command, tmp_path)


def programming_tasks(state, source):
    """The node-module tasks that program ``state`` (a kube_proxy_state result), from its state files
    (``source="files"``) or from its inline keys, as the mode_switch role did before state files."""
    tasks = []
    if state["mode"] == "ipvs":
        sets = {"state_src": state["state_files"]["ipset"]} if source == "files" else {"sets": state["ipset"]["sets"]}
        tasks.append({"kubeipvs.node.ipset": dict(sets, exclusive=True)})
    if state["mode"] in ("ipvs", "iptables"):  # an empty node: all chains (none of iptables mode's to keep)
        for family in ("ipv4", "ipv6"):
            chains = ({"state_src": state["state_files"]["iptables_chain"][family]} if source == "files"
                      else {"chains": state["iptables_chain"][family]})
            tasks.append({"kubeipvs.node.iptables_chain": dict(chains, family=family)})
    else:
        for table in state["state_files"]["nftables_tables"] if source == "files" else state["nftables_tables"]:
            content = {"state_src": table["state_src"]} if source == "files" else {"content": table["content"]}
            tasks.append({"kubeipvs.node.nftables_table": dict(content, family=table["family"], name=table["name"])})
    return tasks


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
def test_state_files_program_a_node_as_the_inline_state_does(cluster, netns, tmp_path, mode):
    """kube_proxy_state with ``dest`` writes each node module's input as a compressed file and returns
    only their paths; the node modules given those files (shipped by their action plugins) program a
    real kernel exactly as the inline state does, check mode first, and echo only the path back."""
    varied_services(cluster)
    common = {"node_name": "node1", "node_ips": ["192.0.2.11", "2001:db8::11"], "mode": mode,
              "cluster_cidr": "10.244.0.0/16", "ip_families": ["ipv4", "ipv6"]}
    dest = tmp_path / "state" / mode
    inline, files = cluster.modules([("kube_proxy_state", common), ("kube_proxy_state", dict(common, dest=str(dest)))])
    assert not inline.get("failed") and not files.get("failed"), (inline, files)
    replaced = {"dummy_interface", "ipvs_sync", "ipset", "ipsets", "ipset_types", "iptables_chain",
                "iptables_chain_unshared", "nftables_tables", "cluster_ip_ports"}
    assert not replaced & set(files), sorted(files)
    assert {key: value for key, value in inline.items() if key not in replaced | {"invocation"}} == {
        key: value for key, value in files.items() if key not in ("state_files", "invocation")}
    written = files["state_files"]
    assert gzip_json(written["dataplane_facts"]) == {"expect_service_ports": inline["cluster_ip_ports"]}
    assert files["counts"]["cluster_ip_ports"] == len(inline["cluster_ip_ports"]) > 0
    if mode == "ipvs":
        assert gzip_json(written["ipvs_sync"]) == {"services": inline["ipvs_sync"]["services"]}
        assert gzip_json(written["dummy_interface"]) == {"addresses": inline["dummy_interface"]["addresses"]}
        assert gzip_json(written["ipset"]) == {"sets": inline["ipset"]["sets"]}
    for key in ("iptables_chain", "iptables_chain_unshared"):
        if key in inline:
            assert {family: gzip_json(path)["chains"] for family, path in written[key].items()} == inline[key]
    if mode == "nftables":
        assert [{"family": table["family"], "name": table["name"], "content": gzip_json(table["state_src"])["content"]}
                for table in written["nftables_tables"]] == inline["nftables_tables"]
    assert sorted(str(path) for path in dest.iterdir()) == sorted(paths_in(written))  # no scratch file left

    from_files, from_inline = programming_tasks(files, "files"), programming_tasks(inline, "inline")
    checked = netns_playbook(netns, tmp_path, from_files, "--check")
    outcomes = [(result["changed"], bool(result.get("failed"))) for result in checked]
    assert outcomes == [(True, False)] * len(from_files), [
        {key: result.get(key) for key in ("changed", "failed", "msg", "invocation")} for result in checked]
    assert netns.sh("nft list ruleset") == "" or mode != "nftables"  # check mode wrote nothing
    applied = netns_playbook(netns, tmp_path, from_files)
    assert all(result["changed"] and not result.get("failed") for result in applied), applied
    for task, result in zip(from_files, applied, strict=True):
        (args,) = task.values()
        echoed = result["invocation"]["module_args"]
        assert echoed["state_src"] == args["state_src"]  # the path the task gave, not the state it holds
        assert not any(echoed.get(option) for option in ("sets", "chains", "content")), echoed
    # the node, checked against the ClusterIP ports in its file: served by the mode programmed (IPVS
    # mode's are not - this kernel has no IPVS, so all of them are missing), and only the path echoed
    scope = {"cidrs": ["10.96.0.0/12", "fd00:10:96::/108"]}
    (facts,) = netns_playbook(netns, tmp_path, [{"kubeipvs.node.dataplane_facts": {
        "scope": scope, "state_src": written["dataplane_facts"]}}])
    assert facts["expected_service_ports"] == len(inline["cluster_ip_ports"]), facts
    assert mode in facts["dataplane"]["modes"], facts["dataplane"]["modes"]
    assert facts["missing_service_ports"][mode] == ([] if mode != "ipvs" else inline["cluster_ip_ports"])
    assert facts["invocation"]["module_args"]["state_src"] == written["dataplane_facts"]
    assert not facts["invocation"]["module_args"].get("expect_service_ports")
    # the inline state and the files again: nothing left to change either way
    again = netns_playbook(netns, tmp_path, from_inline + from_files)
    assert not any(result["changed"] or result.get("failed") for result in again), again
    # as an async task; and a file that is not there fails the task, naming it
    first_async = dict(from_files[0], **{"async": 60, "poll": 1})
    missing = {key: dict(args, state_src=str(tmp_path / "absent.json.gz")) for key, args in from_files[0].items()}
    in_background, not_there = netns_playbook(netns, tmp_path, [first_async, dict(missing, ignore_errors=True)])
    assert not in_background["changed"] and not in_background.get("failed"), in_background
    assert not_there["failed"] and f"state_src {tmp_path / 'absent.json.gz'}" in not_there["msg"], not_there


@pytest.mark.parametrize("mode", ["ipvs", "iptables", "nftables"])
def test_several_nodes_from_one_read_of_the_cluster(cluster, tmp_path, mode):
    """``nodes``: one call reads the cluster once and writes each node's files to its own folder (a
    folder of ``dest`` or the node's own ``dest``), the same files a call per node writes; node IPs not
    given come from one list of the Node objects."""
    varied_services(cluster)
    common = {"mode": mode, "cluster_cidr": "10.244.0.0/16", "ip_families": ["ipv4", "ipv6"]}
    own = {"node1": {"node_ips": cluster.node_ips("node1")},
           "node2": {"node_ips": ["192.0.2.12"], "node_port_addresses": ["192.0.2.12", "198.51.100.20"]}}
    cluster.mark()
    nodes = [{"name": "node1"}, {"name": "node2", **own["node2"], "dest": str(tmp_path / "node2-own")}]
    (together,) = cluster.modules([("kube_proxy_state", dict(common, dest=str(tmp_path / "all"), nodes=nodes))])
    assert not together.get("failed") and not together["changed"], together
    requests = cluster.requests()
    # one list of each kind - the Nodes for node1's IPs, the Services, the EndpointSlices - and no Node read alone
    assert [r.uri.split("?")[0] for r in requests if r.verb == "list" and "continue=" not in r.uri].count(
        "/api/v1/nodes") == 1, requests
    assert not [r for r in requests if r.verb == "get" and "/nodes/" in r.uri], requests
    alone = cluster.modules([("kube_proxy_state", dict(common, node_name=name, dest=str(tmp_path / name), **own[name]))
                             for name in ("node1", "node2")])
    assert together["mode"] == mode and together["kube_proxy_version"] == alone[0]["kube_proxy_version"]
    assert sorted(together["nodes"]) == ["node1", "node2"]
    for name, single in zip(("node1", "node2"), alone, strict=True):
        mine = together["nodes"][name]
        small = ("counts", "node_ips", "sysctls") if mode == "iptables" else ("counts", "node_ips")
        assert sorted(mine) == sorted((*small, "state_files"))  # no list that grows with the Services
        assert {key: mine[key] for key in small} == {key: single[key] for key in small}
        ours, theirs = paths_in(mine["state_files"]), paths_in(single["state_files"])
        folder = tmp_path / "all" / name if name == "node1" else tmp_path / "node2-own"  # node2 has a dest of its own
        assert [path.replace(str(folder), "") for path in ours] == \
            [path.replace(str(tmp_path / name), "") for path in theirs]
        assert [gzip_json(path) for path in ours] == [gzip_json(path) for path in theirs]
    # the two nodes differ (their own endpoints, addresses), so the comparison can tell them apart
    assert [gzip_json(p) for p in paths_in(together["nodes"]["node1"]["state_files"])] != \
        [gzip_json(p) for p in paths_in(together["nodes"]["node2"]["state_files"])]


def test_bad_nodes_fail_before_the_cluster_is_read_and_nothing_is_written(cluster, tmp_path):
    dest = tmp_path / "state"
    twice, bad_ip, bad_name, unknown, no_dest, both, shared = cluster.modules([
        ("kube_proxy_state", {"nodes": [{"name": "node1"}, {"name": "node1"}], "dest": str(dest)}),
        ("kube_proxy_state", {"nodes": [{"name": "node1"}, {"name": "node2", "node_ips": ["192.0.2.300"]}],
                              "dest": str(dest)}),
        ("kube_proxy_state", {"nodes": [{"name": "../node1"}], "dest": str(dest)}),
        ("kube_proxy_state", {"nodes": [{"name": "node1"}, {"name": "node9"}], "dest": str(dest)}),
        ("kube_proxy_state", {"nodes": [{"name": "node1"}]}),
        ("kube_proxy_state", {"nodes": [{"name": "node1"}], "node_name": "node1", "dest": str(dest)}),
        ("kube_proxy_state", {"nodes": [{"name": "node1", "dest": str(dest / "node2")}, {"name": "node2"}],
                              "dest": str(dest)}),
    ])
    assert twice["failed"] and "nodes[1].name: node1 is listed twice" in twice["msg"], twice
    assert bad_ip["failed"] and "nodes[1].node_ips: 192.0.2.300 is not an IP address" in bad_ip["msg"], bad_ip
    assert bad_name["failed"] and "nodes[0].name" in bad_name["msg"], bad_name
    assert unknown["failed"] and "node node9 not found" in unknown["msg"], unknown
    assert no_dest["failed"] and "nodes[0]: no folder for its state files" in no_dest["msg"], no_dest
    assert shared["failed"] and f"nodes[1]: {dest / 'node2'} is another node's folder too" in shared["msg"], shared
    assert both["failed"] and "mutually exclusive" in both["msg"], both
    assert not dest.exists() and not cluster.writes()


def test_each_node_rendered_for_its_own_families_and_none_for_an_empty_list(cluster, tmp_path):
    """``nodes[].ip_families``: a node whose kernel runs IPv6 gets kube-proxy's (empty) IPv6 objects
    in an IPv4-only cluster, the other node only IPv4 ones; ``nodes: []`` reads the cluster's
    versions and renders no node (the switch's preflight)."""
    seed(cluster)
    dest = tmp_path / "state"
    nodes = [{"name": "node1", "node_ips": ["192.0.2.11"], "ip_families": ["ipv4", "ipv6"]},
             {"name": "node2", "node_ips": ["192.0.2.12"]}]
    (together,) = cluster.modules([("kube_proxy_state", {"nodes": nodes, "dest": str(dest)})])
    cluster.mark()
    (none,) = cluster.modules([("kube_proxy_state", {"nodes": [], "mode": "nftables"})])
    assert not together.get("failed") and not none.get("failed"), (together, none)
    listed = [r.uri for r in cluster.requests() if r.verb == "list"]
    assert not [uri for uri in listed if "services" in uri or "endpointslices" in uri], listed
    sets = {name: {entry["name"] for entry in gzip_json(together["nodes"][name]["state_files"]["ipset"])["sets"]}
            for name in ("node1", "node2")}
    assert "KUBE-6-CLUSTER-IP" in sets["node1"] and "KUBE-CLUSTER-IP" in sets["node1"], sorted(sets["node1"])
    assert "KUBE-CLUSTER-IP" in sets["node2"] and not [name for name in sets["node2"] if name.startswith("KUBE-6-")]
    assert sorted(together["nodes"]["node1"]["state_files"]["iptables_chain"]) == ["ipv4", "ipv6"]
    assert sorted(together["nodes"]["node2"]["state_files"]["iptables_chain"]) == ["ipv4"]
    assert none["nodes"] == {} and none["kubernetes_version"] == f"v{lab_cluster.version()}", none
    assert none["kube_proxy_version"] and none["mode"] == "nftables"


def test_a_node_whose_ipv6_is_off_takes_its_ipv4_internal_ip_alone(cluster, tmp_path):
    """The Node lists an IPv4 and an IPv6 InternalIP (a dual-stack cluster); where the node's kernel
    runs kube-proxy for IPv4 alone (IPv6 switched off, ``ip_families: [ipv4]``), its IPv6 InternalIP is
    nobody's node IP, as for kube-proxy: read from the API, the node IPs are those of its families.
    Given ones of another family stay an error, naming them."""
    seed(cluster)
    ipv4, ipv6 = cluster.node_ips("node1")
    one, many, given = cluster.modules([
        ("kube_proxy_state", {"node_name": "node1", "ip_families": ["ipv4"]}),
        ("kube_proxy_state", {"nodes": [{"name": "node1", "ip_families": ["ipv4"]}, {"name": "node2"}],
                              "dest": str(tmp_path / "state"), "ip_families": ["ipv4", "ipv6"]}),
        ("kube_proxy_state", {"node_name": "node1", "node_ips": [ipv4, ipv6], "ip_families": ["ipv4"]}),
    ])
    assert not one.get("failed") and one["node_ips"] == [ipv4], one
    assert not [name for name in one["ipsets"] if name.startswith("KUBE-6-")], sorted(one["ipsets"])
    assert {"protocol": "tcp", "address": ipv4, "port": 30080} in [
        {key: s[key] for key in ("protocol", "address", "port")} for s in one["ipvs_sync"]["services"]]
    assert not many.get("failed"), many
    assert many["nodes"]["node1"]["node_ips"] == [ipv4]
    assert many["nodes"]["node2"]["node_ips"] == cluster.node_ips("node2")  # both families: both InternalIPs
    assert given["failed"] and "the node runs kube-proxy for ipv4 only, but its node IPs are ipv4, ipv6" in given["msg"]


def test_zone_hints_take_each_node_s_zone_label_and_a_clear_error_without_the_right(cluster, tmp_path):
    """Endpoints with zone hints (a Service's trafficDistribution): each node serves those hinted for the
    zone its Node's topology.kubernetes.io/zone label names, read with one GET for a node (one LIST for
    ``nodes``); a user who may not read Nodes is told what to grant; without hints no Node is read."""
    def label(node, zone):
        cluster.call("PATCH", f"/api/v1/nodes/{node}", {"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}},
                     content_type="application/merge-patch+json")

    for node, zone in (("node1", "zone-a"), ("node2", "zone-b")):
        label(node, zone)
        cluster.undo.append(lambda node=node: label(node, None))
    cluster.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zonal", "namespace": "default"},
                 "spec": {"clusterIP": "10.100.9.40", "clusterIPs": ["10.100.9.40"],
                          "trafficDistribution": "PreferClose",
                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    cluster.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "zonal-abcde", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": "zonal"}},
                 "addressType": "IPv4",
                 "endpoints": [{"addresses": [address], "conditions": {"ready": True}, "nodeName": node,
                                "hints": {"forZones": [{"name": zone}]}}
                               for address, node, zone in (("10.244.1.40", "node1", "zone-a"),
                                                           ("10.244.2.40", "node2", "zone-b"))],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "test-zone-reader"},
                 "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
                           {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}]})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "test-zone-reader"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "test-zone-reader"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "reader"}]})
    common = {"mode": "ipvs", "kube_proxy_version": "v1.37.2"}
    cluster.mark()
    node1, node2, together, denied = cluster.modules([
        ("kube_proxy_state", dict(common, node_name="node1", node_ips=["192.0.2.11"])),
        ("kube_proxy_state", dict(common, node_name="node2", node_ips=["192.0.2.12"])),
        ("kube_proxy_state", dict(common, dest=str(tmp_path), nodes=[{"name": "node1", "node_ips": ["192.0.2.11"]},
                                                                     {"name": "node2", "node_ips": ["192.0.2.12"]}])),
        ("kube_proxy_state", dict(common, node_name="node1", node_ips=["192.0.2.11"],
                                  kubeconfig=cluster.kubeconfig_for(READER_TOKEN))),
    ])

    def real_servers(services):
        return next([r["address"] for r in s["real_servers"]] for s in services if s["address"] == "10.100.9.40")

    assert real_servers(node1["ipvs_sync"]["services"]) == ["10.244.1.40"], node1
    assert real_servers(node2["ipvs_sync"]["services"]) == ["10.244.2.40"], node2
    for name, served in (("node1", "10.244.1.40"), ("node2", "10.244.2.40")):
        files = together["nodes"][name]["state_files"]
        assert real_servers(gzip_json(files["ipvs_sync"])["services"]) == [served], together
    node_reads = [(r.verb, r.uri.split("?")[0]) for r in cluster.requests() if "/api/v1/nodes" in r.uri]
    assert node_reads == [("get", "/api/v1/nodes/node1"), ("get", "/api/v1/nodes/node2"), ("list", "/api/v1/nodes")]
    assert denied.get("failed") and "cannot read the Nodes (403 Forbidden), whose topology.kubernetes.io/zone " \
                                    "labels pick the endpoints of Services with zone hints; grant get and list " \
                                    "on nodes" in denied["msg"], denied
    assert not cluster.writes()


def test_feature_gates_shape_the_rendering_and_refuse_what_is_not_rendered(cluster):
    """kube-proxy's featureGates: AllowServiceExternalIPs=false leaves the external IPs out; a gate that
    rules the mode out fails - with no node listed too, as the switch's preflight asks - and so does a
    gate that is not true or false, before the cluster is read."""
    cluster.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "outside", "namespace": "default"},
                 "spec": {"clusterIP": "10.100.9.41", "clusterIPs": ["10.100.9.41"], "externalIPs": ["198.51.100.41"],
                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    common = {"node_name": "node1", "node_ips": ["192.0.2.11"], "kube_proxy_version": "v1.37.2"}
    cluster.mark()
    programmed, left_out, localhost, ipvs_off, preflight, not_a_flag = cluster.modules([
        ("kube_proxy_state", dict(common, mode="iptables")),
        ("kube_proxy_state", dict(common, mode="iptables", feature_gates={"AllowServiceExternalIPs": False})),
        ("kube_proxy_state", dict(common, mode="nftables",
                                  feature_gates={"KubeProxyNFTablesLocalhostNodePorts": True})),
        ("kube_proxy_state", dict(common, mode="ipvs", feature_gates={"KubeProxyIPVS": False})),
        ("kube_proxy_state", {"nodes": [], "mode": "ipvs", "kube_proxy_version": "v1.37.2",
                              "feature_gates": {"KubeProxyIPVS": False}}),
        ("kube_proxy_state", dict(common, mode="iptables", feature_gates={"AllowServiceExternalIPs": "no"})),
    ])
    assert "198.51.100.41" in json.dumps(programmed["iptables_chain"]), programmed
    assert not left_out.get("failed") and "198.51.100.41" not in json.dumps(left_out["iptables_chain"]), left_out
    assert localhost.get("failed") and "KubeProxyNFTablesLocalhostNodePorts=true on kube-proxy 1.37 makes " \
                                       "kube-proxy serve localhost NodePorts" in localhost["msg"], localhost
    for refused in (ipvs_off, preflight):
        assert refused.get("failed") and "KubeProxyIPVS=false on kube-proxy 1.37 makes kube-proxy refuse IPVS " \
                                         "mode" in refused["msg"], refused
    assert not_a_flag.get("failed") and not_a_flag["msg"] == \
        "feature_gates: AllowServiceExternalIPs must be true or false, as in featureGates", not_a_flag
    # the refused calls read the versions alone, never a Service
    services_read = [r for r in cluster.requests() if r.uri.startswith("/api/v1/services")]
    assert len(services_read) == 2, services_read
