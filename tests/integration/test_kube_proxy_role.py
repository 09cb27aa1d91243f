# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/kube_proxy in a play over three inventory nodes, against the real API server, with the real
kube-proxy on the three Nodes (network namespaces of this host).

This host's kernel has no IPVS, so kube-proxy in IPVS mode - the role's default - exits at start
there, as it does on any node without ip_vs: test_ipvs_mode_where_the_kernel_has_no_ipvs shows what
the role does then. The tests that need Ready pods after the role pass ``kube_proxy_mode:
iptables``, which changes nothing else of what the role does; the IPVS-mode role is proven on the
lab VMs (molecule)."""

from __future__ import annotations

import json
import urllib.request

import yaml
from kube_fixtures import KUBE_PROXY_IMAGE, NODES, pod_ready, seed_kubeadm_kube_proxy

RUNNABLE_HERE = {"kube_proxy_mode": "iptables"}
METRICS = {"metricsBindAddress": "0.0.0.0:10249"}  # so the test can ask each kube-proxy for its mode


def run_role(cluster, expect_failure=False, **role_vars):
    inventory = cluster.tmp_path / "inventory.ini"
    inventory.write_text("".join(f"{node} ansible_connection=local\n" for node in NODES))
    playbook = cluster.tmp_path / "role.yml"
    playbook.write_text(json.dumps([{
        "name": "kube-proxy in IPVS mode", "hosts": "all", "gather_facts": False,
        "roles": [{"role": "kubeipvs.node.kube_proxy",
                   "vars": dict({"kube_proxy_kubeconfig": cluster.kubeconfig, "kube_proxy_restart_poll_interval": 0.5,
                                 "kube_proxy_restart_timeout": 180}, **role_vars)}]}]))
    results = cluster.playbook(playbook, inventory)
    failed = [r for r in results if r.get("failed")]
    assert bool(failed) == expect_failure, results
    return results


def uids(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in cluster.pods()}


def config(cluster):
    return yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])


def proxy_mode(cluster, node):
    """What the kube-proxy running on ``node`` says its mode is (its metrics server's /proxyMode)."""
    try:
        with urllib.request.urlopen(f"http://{cluster.node_ip(node)}:10249/proxyMode", timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return None


def test_configures_existing_kube_proxy_then_restarts_node_by_node(cluster):
    """kubeadm's kube-proxy (mode "", i.e. iptables) reconfigured; kube_proxy_mode iptables keeps it
    runnable here, the IPVS settings go into the configuration all the same."""
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    settings = dict(RUNNABLE_HERE, kube_proxy_ipvs_strict_arp=True, kube_proxy_ipvs_scheduler="wrr",
                    kube_proxy_config_merge=METRICS)
    results = run_role(cluster, **settings)
    stored = config(cluster)
    assert stored["mode"] == "iptables" and stored["ipvs"]["scheduler"] == "wrr" and stored["ipvs"]["strictARP"]
    assert stored["conntrack"]["maxPerCore"] == 0 and stored["metricsBindAddress"] == "0.0.0.0:10249"
    restarted = next(r for r in results if "restarted" in r and not r.get("skipped") and r["changed"])
    assert [r["node"] for r in restarted["restarted"]] == list(NODES)
    after = uids(cluster)
    assert all(after[node] != before[node] for node in NODES)
    assert all(pod_ready(p) for p in cluster.pods())
    assert cluster.get("DaemonSet", "kube-proxy")["metadata"].get("labels", {}).get(
        "app.kubernetes.io/managed-by") is None, "the role adopted kubeadm's DaemonSet"
    # every restarted kube-proxy runs with the new configuration
    cluster.wait_for(lambda: all(proxy_mode(cluster, node) == "iptables" for node in NODES))

    cluster.mark()
    again = run_role(cluster, **settings)
    assert not [r for r in again if r.get("changed")], again
    assert uids(cluster) == after, "an unchanged configuration restarted kube-proxy"
    assert not cluster.writes()


def test_restart_nodes_from_the_api(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    run_role(cluster, kube_proxy_restart_nodes_from="api", kube_proxy_update_strategy="OnDelete", **RUNNABLE_HERE)
    after = uids(cluster)
    assert all(after[node] != before[node] for node in NODES)
    assert all(pod_ready(p) for p in cluster.pods())
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"]["type"] == "OnDelete"


def deploy_vars(cluster):
    return {"kube_proxy_version": KUBE_PROXY_IMAGE.rsplit(":", 1)[1],
            "kube_proxy_api_server": cluster.kube.plane.node_server,
            "kube_proxy_cluster_cidr": "10.244.0.0/16", "kube_proxy_ipvs_tcp_timeout": "900s"}


def test_deploys_kube_proxy_when_there_is_none(cluster):
    """The collection's DaemonSet: Ready only once kube-proxy answers /healthz, i.e. has synced."""
    role_vars = dict(deploy_vars(cluster), **RUNNABLE_HERE)
    results = run_role(cluster, **role_vars)
    assert any(r.get("changed") and "objects" in r for r in results)
    stored = config(cluster)
    assert stored["mode"] == "iptables" and stored["clusterCIDR"] == "10.244.0.0/16"
    assert stored["ipvs"]["tcpTimeout"] == "900s" and stored["conntrack"]["maxPerCore"] == 0
    cluster.wait_for_kube_proxy()
    running = uids(cluster)
    cluster.mark()
    again = run_role(cluster, **role_vars)
    assert not [r for r in again if r.get("changed")], again
    assert not cluster.writes() and uids(cluster) == running


def test_ipvs_mode_where_the_kernel_has_no_ipvs(cluster):
    """What a real cluster does when its nodes lack ip_vs: the role configures IPVS mode, restarts
    node1's kube-proxy, which exits at start and never gets Ready (the collection's DaemonSet waits
    for /healthz), so the role fails there and node2 and node3 keep their running kube-proxy."""
    run_role(cluster, **dict(deploy_vars(cluster), **RUNNABLE_HERE))
    cluster.wait_for_kube_proxy()
    before = uids(cluster)
    results = run_role(cluster, expect_failure=True, kube_proxy_restart_timeout=30)
    assert config(cluster)["mode"] == "ipvs"
    [failed] = [r for r in results if r.get("failed")]
    assert "kube-proxy on node node1 not Ready 30s after deleting" in failed["msg"], failed["msg"]
    pod = failed["pod"]
    [container] = pod["container_statuses"]
    assert container["last_state"]["terminated"]["exitCode"] == 1, container
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff", container
    assert any(e["reason"] == "BackOff" for e in pod["events"]), pod["events"]
    after = uids(cluster)
    assert after["node1"] != before["node1"]
    assert (after["node2"], after["node3"]) == (before["node2"], before["node3"]), "the role went on"
    logs = sorted(cluster.kube.root.glob(f"node1/logs/kube-system_{pod['name']}_*/kube-proxy/*.log"))
    assert logs and "can't use the IPVS proxier" in logs[0].read_text(), logs
