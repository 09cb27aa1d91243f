# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS mode's ipsets and iptables rules rendered from Services, applied with kubeipvs.node.ipset and
kubeipvs.node.iptables_chain in a throw-away network namespace: every rule iptables accepts (bitmap
sets included), a second run changes nothing, and iptables-save prints them as it prints what
kube-proxy's IPVS mode writes. (The IPVS side needs ip_vs, which this host lacks: the lab VMs
compare it with the real kube-proxy, molecule ipvs_node.)"""

from __future__ import annotations

import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / ".build" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.append(str(COLLECTIONS))

from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_ipvs_iptables import (  # noqa: E402
    ipvs_iptables_state,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import node_state  # noqa: E402

NODE_IP = "10.181.0.1"


def service(name, cluster_ip, ports, service_type="ClusterIP", status=None, **spec):
    body = {"metadata": {"namespace": "shop", "name": name},
            "spec": dict(spec, type=service_type, clusterIP=cluster_ip, clusterIPs=[cluster_ip], ports=ports)}
    if status:
        body["status"] = {"loadBalancer": {"ingress": status}}
    return body


SERVICES = [
    service("web", "172.31.0.1", [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                                  {"name": "dns", "port": 53, "nodePort": 30053, "protocol": "UDP"}], "NodePort",
            externalIPs=["198.51.100.8"]),
    service("local", "172.31.0.2", [{"name": "s", "port": 9, "nodePort": 30009, "protocol": "SCTP"}], "LoadBalancer",
            status=[{"ip": "203.0.113.20"}], externalTrafficPolicy="Local", healthCheckNodePort=32001,
            externalIPs=["198.51.100.9"], loadBalancerSourceRanges=["10.181.0.0/24"]),
]
SLICES = [{"metadata": {"namespace": "shop", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}, "nodeName": "node1"}]}]


def kube_lines(netns, command, table):
    return [line for line in netns.sh(f"{command} -t {table}").splitlines()
            if line.startswith((":KUBE-", "-A KUBE-")) or (line.startswith("-A ") and "-j KUBE-" in line)]


def test_ipvs_mode_rules_apply_idempotently_as_kube_proxy_prints_them(netns):
    state = node_state(SERVICES, SLICES, "node1", [NODE_IP], families=["ipv4", "ipv6"])
    chains = ipvs_iptables_state(state["ipsets"], cluster_cidr="10.244.0.0/16")
    assert sorted(chains) == ["ipv4", "ipv6"]

    sets = netns.module("ipset", sets=state["ipset"]["sets"], exclusive=True)
    assert sets["changed"] and not sets.get("failed"), sets
    for family, command in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        first = netns.module("iptables_chain", family=family, chains=chains[family])
        assert first["changed"] and not first.get("failed"), first
        before = {table: kube_lines(netns, command, table) for table in ("nat", "filter")}
        again = netns.module("iptables_chain", family=family, chains=chains[family])
        assert not again["changed"] and again["commands"] == [], again
        assert {table: kube_lines(netns, command, table) for table in ("nat", "filter")} == before

    nat, filter_table = kube_lines(netns, "iptables-save", "nat"), kube_lines(netns, "iptables-save", "filter")
    # iptables-save's forms of what kube-proxy writes (its restore input differs: ! -s after the set
    # match, --or-mark / --xor-mark, a plain REJECT)
    for line in (
        '-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for'
        ' masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ',
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter'
        ' purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in -m addrtype'
        ' ! --src-type LOCAL -j ACCEPT',
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        " --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        '-A KUBE-NODE-PORT -p sctp -m comment --comment "Kubernetes nodeport SCTP port with'
        " externalTrafficPolicy=local with type \\'hash ip:port\\'\" -m set --match-set"
        " KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN",
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ):
        assert line in nat, line
    assert ("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst"
            " -j REJECT --reject-with icmp-port-unreachable") in filter_table
    assert ('-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port +'
            ' source IP for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src'
            " -j RETURN") in filter_table
    v6 = kube_lines(netns, "ip6tables-save", "filter")
    assert ("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst"
            " -j REJECT --reject-with icmp6-port-unreachable") in v6
