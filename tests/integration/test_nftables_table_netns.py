# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.nftables_table against the host kernel's nf_tables, inside a throw-away network
namespace, with kube-proxy tables rendered by _kube_proxy_nftables from Services and
EndpointSlices - and traffic: a client reaches a backend in a second namespace through a ClusterIP
by the rendered nat rules, and a Service without endpoints is rejected."""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
import time

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_nftables import nftables_state
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import replace_batch

NODE = "node1"
NODE_IPS = ["10.180.0.254"]
BACKEND = "10.180.0.1"


def service(name, cluster_ip, port, node_port=None, namespace="default"):
    port_spec = {"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}
    if node_port:
        port_spec["nodePort"] = node_port
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": cluster_ip,
                     "clusterIPs": [cluster_ip], "ports": [port_spec]}}


def endpoint_slice(name, addresses, namespace="default"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}, "nodeName": "node2"}
                          for address in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


SERVICES = [service("web", "172.30.0.41", 80, node_port=30080), service("empty", "172.30.0.42", 80)]
SLICES = [endpoint_slice("web", [BACKEND])]


def kube_proxy_table(services=None, slices=None):
    return nftables_state(SERVICES if services is None else services, SLICES if slices is None else slices,
                          NODE, NODE_IPS, cluster_cidr="10.244.0.0/16",
                          service_cidrs="172.30.0.0/16")["ipv4"]


def tables(netns):
    return netns.sh("nft list tables").split("\n")


def test_apply_idempotence_check_mode_and_foreign_table(netns):
    netns.sh("nft add table inet foreign && nft add chain inet foreign keep && nft add table ip kube-proxy-other")
    table = kube_proxy_table()

    check = netns.module("nftables_table", check_mode=True, diff=True, **table)
    assert check["changed"] and check["table"]["present"], check
    assert check["diff"]["before"] == "" and "service-ips" in check["diff"]["after"]
    assert "table ip kube-proxy\n" not in netns.sh("nft list tables") + "\n"

    first = netns.module("nftables_table", diff=True, **table)
    assert first["changed"], first
    live = netns.sh("nft list table ip kube-proxy")
    assert live == first["diff"]["after"]
    web_hash = base64.b32encode(hashlib.sha256(b"default/web/tcp/http").digest()).decode()[:8]
    assert f"goto service-{web_hash}-default/web/tcp/http" in live
    assert "172.30.0.41 . tcp . 80 : goto service-" in live and f"dnat to {BACKEND}:" in live
    assert first["table"]["chains"] == live.count("\tchain ")

    again = netns.module("nftables_table", **table)
    assert not again["changed"], again

    # A different endpoint set: changed, and check mode leaves the live table alone.
    moved = kube_proxy_table(slices=[endpoint_slice("web", [BACKEND, "10.180.0.2"])])
    check_moved = netns.module("nftables_table", check_mode=True, diff=True, **moved)
    assert check_moved["changed"] and "numgen random mod 2" in check_moved["diff"]["after"]
    assert netns.sh("nft list table ip kube-proxy") == live
    assert netns.module("nftables_table", **moved)["changed"]
    assert "numgen random mod 2" in netns.sh("nft list table ip kube-proxy")

    listed = netns.sh("nft list tables")
    assert "table inet foreign" in listed and "table ip kube-proxy-other" in listed
    assert "chain keep" in netns.sh("nft list table inet foreign")


def test_bad_content_fails_before_anything_changes(netns):
    table = kube_proxy_table()
    assert netns.module("nftables_table", **table)["changed"]
    before = netns.sh("nft list ruleset")

    typo = dict(table, content=table["content"].replace("masquerade fully-random", "masqerade fully-random"))
    failed = netns.module("nftables_table", **typo)
    assert failed.get("failed") and "nft rejected the content" in failed["msg"] and "masqerade" in failed["msg"]

    escape = dict(table, content="}\nflush ruleset\ntable ip kube-proxy {\n")
    failed = netns.module("nftables_table", **escape)
    assert failed.get("failed") and "closes the table" in failed["msg"], failed

    second = dict(table, content="chain a {\n}\n}\ntable ip other {\n")
    failed = netns.module("nftables_table", **second)
    assert failed.get("failed") and "closes the table" in failed["msg"], failed
    assert netns.sh("nft list ruleset") == before


def test_kernel_applies_the_replacement_batch_atomically(netns):
    """The batch the module sends, with a new body the kernel refuses (a jump loop reachable from a
    base chain is found by the kernel, not by nft): the table keeps its old content, nothing of the batch sticks."""
    table = kube_proxy_table()
    assert netns.module("nftables_table", **table)["changed"]
    before = netns.sh("nft list ruleset")
    loop = ("chain input {\n\ttype filter hook input priority 0; policy accept;\n\tjump a\n}\n"
            "chain a {\n\tjump b\n}\nchain b {\n\tjump a\n}\n")
    batch = replace_batch("ip", "kube-proxy", loop)
    result = subprocess.run(["ip", "netns", "exec", netns.name, "nft", "-f", "-"], input=batch, text=True,
                            capture_output=True, check=False)
    # "Could not process rule": the kernel refused the batch (nft itself had accepted it).
    assert result.returncode != 0 and "Could not process rule" in result.stderr, result.stderr
    assert netns.sh("nft list ruleset") == before


def test_state_absent(netns):
    netns.sh("nft add table ip6 kube-proxy")
    table = kube_proxy_table()
    assert netns.module("nftables_table", **table)["changed"]
    check = netns.module("nftables_table", check_mode=True, family="ip", name="kube-proxy", state="absent")
    assert check["changed"] and "table ip kube-proxy\n" in netns.sh("nft list tables")
    gone = netns.module("nftables_table", family="ip", name="kube-proxy", state="absent")
    assert gone["changed"] and not gone["table"]["present"]
    assert "table ip kube-proxy\n" not in netns.sh("nft list tables") + "\n"
    assert "table ip6 kube-proxy" in netns.sh("nft list tables")
    assert not netns.module("nftables_table", family="ip", name="kube-proxy", state="absent")["changed"]


@pytest.fixture
def backend(netns):
    """A second namespace joined to the test's by a veth pair, with an HTTP server on BACKEND:8080."""
    name = f"{netns.name}-b"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        netns.sh(f"ip link set lo up && ip link add va type veth peer name vb netns {name} && "
                 "ip addr add 10.180.0.254/24 dev va && ip link set va up && "
                 "ip route add 172.30.0.0/16 dev va")
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        f"ip link set lo up && ip addr add {BACKEND}/24 dev vb && ip link set vb up"], check=True)
        token = secrets.token_hex(8)
        (netns.tmp_path / "www").mkdir()
        (netns.tmp_path / "www" / "index.html").write_text(token)
        server = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-m", "http.server", "8080",
                                   "--bind", BACKEND, "--directory", str(netns.tmp_path / "www")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _attempt in range(50):
            if netns.sh(f"curl -s -m 1 http://{BACKEND}:8080/", check=False) == token:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the backend never answered directly")
        yield token
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_traffic_reaches_the_backend_through_the_cluster_ip(netns, backend):
    assert netns.sh("curl -s -m 2 http://172.30.0.41/", check=False) == ""  # no rules yet: nothing answers
    assert netns.module("nftables_table", **kube_proxy_table())["changed"]
    assert netns.sh("curl -s -m 5 http://172.30.0.41/") == backend
    assert netns.sh("curl -s -m 5 http://10.180.0.254:30080/") == backend  # NodePort on the node IP
    # No endpoints: rejected at once (reject-chain), not a time-out.
    refused = subprocess.run(["ip", "netns", "exec", netns.name, "curl", "-s", "-m", "5", "http://172.30.0.42/"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 7, refused  # curl: connection refused
    # Another port of a ClusterIP: rejected by cluster-ips-check.
    wrong_port = subprocess.run(["ip", "netns", "exec", netns.name, "curl", "-s", "-m", "5", "http://172.30.0.41:81/"],
                                capture_output=True, text=True, check=False)
    assert wrong_port.returncode == 7, wrong_port


def test_dual_stack_tables_with_every_feature_load_and_stay_unchanged(netns):
    """Every construct the renderer writes (affinity sets, source-range firewall, Local policies,
    no-endpoint drops, IPv6 endpoints) is accepted by the kernel, for both families, and reads
    back equal to the content (second run unchanged)."""
    lb = {"metadata": {"name": "lb", "namespace": "apps"},
          "spec": {"type": "LoadBalancer", "clusterIP": "172.30.0.50", "clusterIPs": ["172.30.0.50", "fd00:96::50"],
                   "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                   "loadBalancerSourceRanges": ["203.0.113.0/24"], "externalIPs": ["198.51.100.7"],
                   "ports": [{"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443},
                             {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
          "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.200"}]}}}
    local_only = service("internal", "172.30.0.51", 80)
    local_only["spec"]["internalTrafficPolicy"] = "Local"
    slices = [
        {"metadata": {"name": "lb-v4", "namespace": "apps", "labels": {"kubernetes.io/service-name": "lb"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": NODE},
                       {"addresses": ["10.244.2.6"], "nodeName": "n2"}],
         "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}]},
        {"metadata": {"name": "lb-v6", "namespace": "apps", "labels": {"kubernetes.io/service-name": "lb"}},
         "addressType": "IPv6", "endpoints": [{"addresses": ["fd00:244::5"], "nodeName": NODE}],
         "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}]},
        endpoint_slice("internal", ["10.244.2.9"]),
    ]
    state = nftables_state([lb, local_only], slices, NODE, ["10.180.0.254", "2001:db8::254"],
                           cluster_cidr="10.244.0.0/16,fd00:244::/56", service_cidrs="172.30.0.0/16,fd00:96::/112")
    assert sorted(state) == ["ipv4", "ipv6"]
    for family_table in state.values():
        first = netns.module("nftables_table", **family_table)
        assert first["changed"] and first["table"]["chains"] > 10, first
        assert not netns.module("nftables_table", **family_table)["changed"]
    v6 = netns.sh("nft list table ip6 kube-proxy")
    assert "dnat to [fd00:244::5]:8443" in v6 and "flags dynamic,timeout" in v6
    v4 = netns.sh("nft list table ip kube-proxy")
    assert "172.30.0.51 . tcp . 80 comment \"default/internal:http\" : drop" in v4
    assert "udp . 30053 comment \"apps/lb:dns\" : goto reject-chain" in v4
