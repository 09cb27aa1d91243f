# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The iptables-mode state rendered from Services, applied with kubeipvs.node.iptables_chain in a
throw-away network namespace (the "node"): a second run changes nothing, and a client on the
node reaches a backend in a second namespace (the "pod") through the ClusterIP and the NodePort
by the KUBE-SVC/KUBE-SEP DNAT, while a Service without endpoints is rejected."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

COLLECTIONS = Path(__file__).resolve().parents[2] / ".build" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.append(str(COLLECTIONS))

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_iptables import (  # noqa: E402
    endpoint_chain_name,
    iptables_state,
    service_chain_name,
)

NODE_IP, POD_IP = "10.180.0.1", "10.180.0.2"
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(8)\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(('pod saw ' + peer[0] + '\\n').encode()); c.close()\n"
)
CLIENT = (
    "import socket, sys\n"
    "try:\n"
    "    print(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).recv(100).decode().strip())\n"
    "except OSError as error:\n"
    "    print(type(error).__name__)\n"
)


def service(namespace, name, cluster_ips, ports, service_type="ClusterIP", status=None, **spec):
    body = {"metadata": {"namespace": namespace, "name": name},
            "spec": dict(spec, type=service_type, clusterIP=cluster_ips[0], clusterIPs=cluster_ips, ports=ports)}
    if status:
        body["status"] = {"loadBalancer": {"ingress": status}}
    return body


def endpoint_slice(namespace, name, addresses, port, address_type="IPv4"):
    return {"metadata": {"namespace": namespace, "name": f"{name}-{address_type}",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": address_type, "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}, "nodeName": node}
                          for address, node in addresses]}


SERVICES = [
    service("shop", "web", ["172.30.0.41"], [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}],
            "NodePort", sessionAffinity="ClientIP"),
    service("shop", "empty", ["172.30.0.42"], [{"name": "http", "port": 80, "protocol": "TCP"}]),
    service("shop", "lb", ["172.30.0.43", "fd00:30::43"],
            [{"name": "http", "port": 443, "nodePort": 30443, "protocol": "TCP"}], "LoadBalancer",
            status=[{"ip": "203.0.113.10"}, {"ip": "2001:db8:1::10"}], externalIPs=["198.51.100.7"],
            externalTrafficPolicy="Local", healthCheckNodePort=32000,
            loadBalancerSourceRanges=["10.180.0.0/24", "2001:db8::/32"], internalTrafficPolicy="Local"),
]
SLICES = [
    endpoint_slice("shop", "web", [(POD_IP, "node2")], 8080),
    endpoint_slice("shop", "lb", [("10.244.1.5", "node1"), ("10.244.2.5", "node2"), ("10.244.3.5", "node3")], 8443),
    endpoint_slice("shop", "lb", [("fd00:244:1::5", "node1"), ("fd00:244:2::5", "node2")], 8443, "IPv6"),
]


@pytest.fixture
def pod_netns(netns):
    """A second namespace joined to the node's by a veth pair, serving TCP on POD_IP:8080."""
    name = f"kubeipvs-p-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        netns.sh(f"ip link set lo up && ip link add kpv0 type veth peer name kpv1 netns {name} && "
                 f"ip addr add {NODE_IP}/24 dev kpv0 && ip link set kpv0 up && "
                 "ip route add 172.30.0.0/16 dev kpv0")  # the node routes the service range somewhere
        pod = ["ip", "netns", "exec", name, "sh", "-c"]
        subprocess.run([*pod, f"ip link set lo up && ip addr add {POD_IP}/24 dev kpv1 && ip link set kpv1 up"],
                       check=True)
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVER])
        deadline = time.monotonic() + 10
        while "pod saw" not in connect(netns, POD_IP, 8080):
            assert time.monotonic() < deadline, "the backend did not start"
            time.sleep(0.1)
        yield name
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


def connect(netns, address, port):
    return netns.sh(f"{sys.executable} -c '{CLIENT}' {address} {port}").strip()


def saved(netns, command, table):
    return [line for line in netns.sh(f"{command} -t {table}").splitlines() if line.startswith(("-A", ":"))]


def test_rendered_state_applies_idempotently_and_carries_traffic(netns, pod_netns):
    state = iptables_state(SERVICES, SLICES, "node1", [NODE_IP, "fd00:180::1"],
                           cluster_cidr="10.244.0.0/16,fd00:244::/48")
    assert sorted(state) == ["ipv4", "ipv6"]

    # Before: the ClusterIP leads nowhere (routed out of kpv0, nobody answers).
    assert connect(netns, "172.30.0.41", 80) in ("TimeoutError", "timeout")

    for family, command in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        first = netns.module("iptables_chain", family=family, chains=state[family])
        assert first["changed"] and not first.get("failed"), first
        nat, filter_table = saved(netns, command, "nat"), saved(netns, command, "filter")
        again = netns.module("iptables_chain", family=family, chains=state[family])
        assert not again["changed"], [chain for chain in again["chains"] if chain["changed"]]
        assert again["commands"] == []
        assert saved(netns, command, "nat") == nat and saved(netns, command, "filter") == filter_table

    nat = saved(netns, "iptables-save", "nat")
    svc = service_chain_name("KUBE-SVC-", "shop/web:http", "tcp")
    sep = endpoint_chain_name("shop/web:http", "tcp", f"{POD_IP}:8080")
    assert f"-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" " \
           f"-m tcp --dport 80 -j {svc}" in nat
    assert f"-A {sep} -p tcp -m comment --comment \"shop/web:http\" -m recent --set --name {sep} " \
           f"--mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination {POD_IP}:8080" in nat
    lb_svl = service_chain_name("KUBE-SVL-", "shop/lb:http", "tcp")
    assert any(line.startswith(f"-A {lb_svl} ") and "10.244.1.5" in line for line in nat)
    assert any("--probability 0.50000000000" in line for line in nat)  # the two non-local lb endpoints
    assert any("KUBE-SVL-" in line for line in saved(netns, "ip6tables-save", "nat"))

    # Through the ClusterIP and the NodePort, the pod answers; the NodePort path is masqueraded.
    assert connect(netns, "172.30.0.41", 80) == f"pod saw {NODE_IP}"
    assert connect(netns, NODE_IP, 30080) == f"pod saw {NODE_IP}"
    # A Service without endpoints is rejected at once by filter KUBE-SERVICES.
    assert connect(netns, "172.30.0.42", 80) == "ConnectionRefusedError"
    counters = netns.sh(f"iptables -t nat -L {sep} -v -n -x")
    assert any(line.split()[0] != "0" and "DNAT" in line for line in counters.splitlines()[2:]), counters
