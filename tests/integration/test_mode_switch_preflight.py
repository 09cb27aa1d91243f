# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/mode_switch preflight against the real API server, with kubeadm's kube-proxy running on the
three Nodes: the Kubernetes version gates for IPVS mode, an unknown target mode, a node without
kube-proxy. The server's version for the gates (1.34, 1.36, 1.40) is the fault proxy's: everything
else it passes through to the real server. Only the preflight entry point runs, so nothing on this
machine is changed; the whole switch is proven on lab VMs (molecule mode_switch)."""

from __future__ import annotations

import json

from kube_fixtures import KUBEADM_CONFIG_IN_A_NAMESPACE, seed_kubeadm_kube_proxy


def preflight(cluster, node="node1", kubeconfig=None, **role_vars):
    inventory = cluster.tmp_path / "inventory.ini"
    inventory.write_text(f"{node} ansible_connection=local\n")
    playbook = cluster.tmp_path / "preflight.yml"
    playbook.write_text(json.dumps([{
        "name": "preflight", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "preflight", "ansible.builtin.include_role": {
            "name": "kubeipvs.node.mode_switch", "tasks_from": "preflight.yml"},
            "vars": dict({"kube_proxy_kubeconfig": kubeconfig or cluster.kubeconfig,
                          "mode_switch_node_ips": [cluster.node_ip("node1")]}, **role_vars)}]}]))
    return cluster.playbook(playbook, inventory)


def failure(results):
    failed = [r for r in results if r.get("failed")]
    return failed[0].get("msg", "") if failed else None


def messages(results):
    return " ".join(str(r.get("msg", "")) for r in results)


def test_ipvs_is_refused_from_kubernetes_1_40_unless_forced(cluster):
    seed_kubeadm_kube_proxy(cluster)
    proxy = cluster.fault_proxy()
    proxy.version = "v1.40.2"
    refused = preflight(cluster, kubeconfig=proxy.kubeconfig, kube_proxy_target_mode="ipvs")
    assert "Kubernetes 1.40.2 no longer supports kube-proxy's IPVS mode" in failure(refused), refused
    forced = preflight(cluster, kubeconfig=proxy.kubeconfig, kube_proxy_target_mode="ipvs", mode_switch_force=True)
    assert "no longer supports" not in (failure(forced) or ""), forced
    assert "deprecated since Kubernetes 1.35 (KEP-5495) and this cluster runs 1.40.2" in messages(forced)
    assert ("GET", "/version", 200) in proxy.requests
    assert not cluster.writes()  # preflight only reads


def test_ipvs_is_warned_about_from_1_35_and_not_before(cluster):
    seed_kubeadm_kube_proxy(cluster)
    warned = preflight(cluster, kube_proxy_target_mode="ipvs")  # the real server: 1.37
    assert "deprecated since Kubernetes 1.35 (KEP-5495) and this cluster runs 1.37" in messages(warned)
    assert "no longer supports" not in (failure(warned) or "")
    proxy = cluster.fault_proxy()
    proxy.version = "v1.36.0"
    warned = preflight(cluster, kubeconfig=proxy.kubeconfig, kube_proxy_target_mode="ipvs")
    assert "deprecated since Kubernetes 1.35 (KEP-5495) and this cluster runs 1.36.0" in messages(warned)
    proxy.version = "v1.34.3"
    quiet = preflight(cluster, kubeconfig=proxy.kubeconfig, kube_proxy_target_mode="ipvs")
    assert "deprecated" not in messages(quiet)
    assert "no longer supports" not in (failure(quiet) or "")
    assert not cluster.writes()


def test_unknown_target_and_node_without_kube_proxy_fail_first(cluster):
    seed_kubeadm_kube_proxy(cluster)
    cluster.mark()
    unknown = preflight(cluster, kube_proxy_target_mode="userspace")
    assert "kube_proxy_target_mode must be ipvs, nftables or iptables" in failure(unknown)
    assert cluster.requests() == []  # nothing ran after the check, not even a read of the API
    stranger = preflight(cluster, node="node9", kube_proxy_target_mode="nftables")
    assert "node9 runs no pod of DaemonSet kube-system/kube-proxy" in failure(stranger), stranger
    assert "nodes running one: node1, node2, node3" in failure(stranger)
    assert not cluster.writes()


def test_a_feature_gate_that_rules_the_target_mode_out_stops_the_preflight(cluster):
    """kube-proxy v1.37 configured with KubeProxyIPVS off would refuse IPVS mode: the preflight says so,
    from the ConfigMap, before any node is touched; the other targets pass that check."""
    gates = "featureGates:\n  KubeProxyIPVS: false\n"
    config = KUBEADM_CONFIG_IN_A_NAMESPACE.replace("kind: KubeProxyConfiguration\n",
                                                   gates + "kind: KubeProxyConfiguration\n", 1)
    seed_kubeadm_kube_proxy(cluster, config_text=config)
    refused = preflight(cluster, kube_proxy_target_mode="ipvs")
    assert "feature_gates: KubeProxyIPVS=false on kube-proxy 1.37 makes kube-proxy refuse IPVS mode" \
        in (failure(refused) or ""), refused
    passed = preflight(cluster, kube_proxy_target_mode="nftables")
    assert "KubeProxyIPVS" not in (failure(passed) or ""), passed
    assert not cluster.writes()
