# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""kubeipvs.node.kube_proxy_restart against the API test server and its DaemonSet controller."""

from __future__ import annotations

from kube_fixtures import (  # pylint: disable=unused-import
    NODES,
    cluster,  # noqa: F401
    pod_ready,
    seed_kubeadm_kube_proxy,
)

FAST = {"poll_interval": 0.1, "timeout": 15}


def uids(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in cluster.pods()}


def image_on(cluster, node):
    return [p["spec"]["containers"][0]["image"] for p in cluster.pods(node)]


def test_check_mode_then_node_by_node_with_on_delete(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)

    checked = cluster.module("kube_proxy_restart", check=True, diff=True, nodes=["node1", "node2"],
                             update_strategy="OnDelete", **FAST)
    assert checked["changed"] and [r["node"] for r in checked["restarted"]] == ["node1", "node2"]
    assert checked["update_strategy"] == {"before": "RollingUpdate", "after": "OnDelete"}
    assert uids(cluster) == before, "check mode deleted a pod"
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert not [w for w in cluster.writes() if w[0] == "DELETE"]
    assert all(w[2].get("dryRun") == "All" for w in cluster.writes())

    result = cluster.module("kube_proxy_restart", nodes=["node1", "node2"], update_strategy="OnDelete", **FAST)
    assert result["changed"], result
    assert [r["node"] for r in result["restarted"]] == ["node1", "node2"]
    after = uids(cluster)
    assert after["node1"] != before["node1"] and after["node2"] != before["node2"]
    assert after["node3"] == before["node3"], "a node that was not named was restarted"
    assert all(pod_ready(p) for p in cluster.pods())
    daemonset = cluster.get("DaemonSet", "kube-proxy")
    assert daemonset["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert {r["new_pod"] for r in result["restarted"]} == {p["metadata"]["name"] for p in cluster.pods()
                                                           if p["spec"]["nodeName"] in ("node1", "node2")}

    # OnDelete: a template change reaches only the node restarted afterwards.
    daemonset["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.k8s.io/kube-proxy:v1.32.0"
    cluster.add(daemonset)
    again = cluster.module("kube_proxy_restart", nodes=["node3"], update_strategy="OnDelete", **FAST)
    assert again["changed"] and again["update_strategy"] == {"before": "OnDelete", "after": "OnDelete"}
    assert image_on(cluster, "node3") == ["registry.k8s.io/kube-proxy:v1.32.0"]
    assert image_on(cluster, "node1") == ["registry.k8s.io/kube-proxy:v1.31.2"]


def test_rolling_update_template_change_replaces_every_pod(cluster):
    """The test server's controller, as the restart module relies on it."""
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    daemonset = cluster.get("DaemonSet", "kube-proxy")
    daemonset["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.k8s.io/kube-proxy:v1.32.0"
    cluster.add(daemonset)
    cluster.wait_for(lambda: all(image_on(cluster, n) == ["registry.k8s.io/kube-proxy:v1.32.0"] for n in NODES)
                     and all(pod_ready(p) for p in cluster.pods()))
    assert not set(uids(cluster).values()) & set(before.values())


def test_all_nodes_at_once(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    result = cluster.module("kube_proxy_restart", all_nodes=True, **FAST)
    assert result["changed"] and sorted(r["node"] for r in result["restarted"]) == list(NODES)
    after = uids(cluster)
    assert all(after[n] != before[n] for n in NODES)


def test_timeout_reports_the_pod_and_stops_the_rollout(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    cluster.faults.never_ready_nodes = {"node2"}
    result = cluster.module("kube_proxy_restart", nodes=["node1", "node2", "node3"], poll_interval=0.1, timeout=3)
    assert result["failed"], result
    assert "kube-proxy on node node2 not Ready 3s after deleting" in result["msg"]
    assert "CrashLoopBackOff" in result["msg"] and "BackOff: Back-off restarting failed container" in result["msg"]
    pod = result["pod"]
    assert pod["node"] == "node2" and pod["phase"] == "Running"
    assert {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
            "message": "containers with unready status: [kube-proxy]"} in pod["conditions"]
    assert pod["container_statuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    reasons = [e["reason"] for e in pod["events"]]
    assert "Scheduled" in reasons and reasons.count("BackOff") == 1, reasons
    assert next(e["count"] for e in pod["events"] if e["reason"] == "BackOff") >= 2, "BackOff not aggregated"
    assert [r["node"] for r in result["restarted"]] == ["node1"]
    assert uids(cluster)["node3"] == before["node3"], "the rollout went on after a failed node"


def test_unknown_node_and_missing_daemonset_fail_before_deleting(cluster):
    results = cluster.modules([("kube_proxy_restart", {"nodes": ["node1"]})])
    assert results[0]["failed"] and "DaemonSet kube-system/kube-proxy not found" in results[0]["msg"]
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    unknown, both = cluster.modules([
        ("kube_proxy_restart", {"nodes": ["node1", "node9"], **FAST}),
        ("kube_proxy_restart", {"nodes": ["node1"], "all_nodes": True, **FAST}),
    ])
    assert unknown["failed"] and "on node(s) node9" in unknown["msg"] and "node1, node2, node3" in unknown["msg"]
    assert both["failed"] and "not both" in both["msg"]
    assert uids(cluster) == before
    assert not cluster.writes()
