# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.kube_proxy_restart against the real API server: kubeadm's kube-proxy DaemonSet runs
the real kube-proxy on the three nodes; the real DaemonSet controller replaces a deleted pod, the
scheduler binds it, the node's pod runner starts it and reports it Ready."""

from __future__ import annotations

import json
import shutil

from kube_fixtures import NODES, pod_ready, seed_kubeadm_kube_proxy

WAIT = {"poll_interval": 0.5, "timeout": 180}
PODS = "/api/v1/namespaces/kube-system/pods"
DAEMONSET = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"


def uids(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in cluster.pods()}


def names(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["name"] for p in cluster.pods()}


def env_on(cluster, node):
    return [p["spec"]["containers"][0].get("env") for p in cluster.pods(node)]


def test_check_mode_then_node_by_node_with_on_delete(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before, old_names = uids(cluster), names(cluster)

    checked = cluster.module("kube_proxy_restart", check=True, diff=True, nodes=["node1", "node2"],
                             update_strategy="OnDelete", **WAIT)
    assert checked["changed"] and [r["node"] for r in checked["restarted"]] == ["node1", "node2"]
    assert checked["update_strategy"] == {"before": "RollingUpdate", "after": "OnDelete", "remembered": None}
    assert uids(cluster) == before, "check mode deleted a pod"
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert cluster.writes() == [("patch", DAEMONSET + "?dryRun=All", 200)]

    cluster.mark()
    result = cluster.module("kube_proxy_restart", nodes=["node1", "node2"], update_strategy="OnDelete", **WAIT)
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
    # the strategy first, then the named nodes' pods, in the order given
    assert cluster.writes() == [("patch", DAEMONSET, 200), ("delete", f"{PODS}/{old_names['node1']}", 200),
                                ("delete", f"{PODS}/{old_names['node2']}", 200)]

    # OnDelete: a template change reaches only the node restarted afterwards.
    marker = [{"name": "KUBEIPVS_TEST_REVISION", "value": "2"}]
    cluster.patch("DaemonSet", "kube-proxy",
                  {"spec": {"template": {"spec": {"containers": [{"name": "kube-proxy", "env": marker}]}}}},
                  strategic=True)
    template_env = cluster.get("DaemonSet", "kube-proxy")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in template_env] == ["KUBEIPVS_TEST_REVISION", "NODE_NAME"]
    again = cluster.module("kube_proxy_restart", nodes=["node3"], update_strategy="OnDelete", **WAIT)
    assert again["changed"] and again["update_strategy"] == {"before": "OnDelete", "after": "OnDelete", "remembered": None}
    assert env_on(cluster, "node3") == [template_env]
    assert all(e["name"] == "NODE_NAME" for e in env_on(cluster, "node1")[0])
    assert uids(cluster)["node1"] == after["node1"] and uids(cluster)["node2"] == after["node2"]
    assert all(pod_ready(p) for p in cluster.pods())


def test_all_nodes_at_once(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before, old_names = uids(cluster), names(cluster)
    result = cluster.module("kube_proxy_restart", all_nodes=True, **WAIT)
    assert result["changed"] and sorted(r["node"] for r in result["restarted"]) == list(NODES)
    after = uids(cluster)
    assert all(after[n] != before[n] for n in NODES)
    assert all(pod_ready(p) for p in cluster.pods())
    assert sorted(cluster.writes()) == sorted(("delete", f"{PODS}/{name}", 200) for name in old_names.values())


def test_timeout_reports_the_pod_and_stops_the_rollout(cluster):
    """node2's /run/xtables.lock is a directory: its new kube-proxy pod fails the hostPath type check
    (FileOrCreate) at every start, as the kubelet's would, and never gets Ready."""
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    lock = cluster.host_root("node2") / "run" / "xtables.lock"
    lock.unlink()
    lock.mkdir()

    def restore():
        shutil.rmtree(lock)
        lock.touch()
    cluster.undo.append(restore)

    result = cluster.module("kube_proxy_restart", nodes=["node1", "node2", "node3"], poll_interval=0.5, timeout=30)
    assert result["failed"], result
    assert "kube-proxy on node node2 not Ready 30s after deleting" in result["msg"], result["msg"]
    assert "kube-proxy waiting (CreateContainerError), restarts 0" in result["msg"], result["msg"]
    assert "hostPath type check failed" in result["msg"], result["msg"]
    pod = result["pod"]
    assert pod["node"] == "node2" and pod["phase"] == "Pending", pod
    assert {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
            "message": "containers with unready status: [kube-proxy]"} in pod["conditions"]
    [container] = pod["container_statuses"]
    assert container["state"]["waiting"]["reason"] == "CreateContainerError" and not container["ready"]
    reasons = [e["reason"] for e in pod["events"]]
    assert "Scheduled" in reasons and reasons.count("Failed") == 1, pod["events"]
    failed = next(e for e in pod["events"] if e["reason"] == "Failed")
    assert "hostPath type check failed" in failed["message"] and failed["count"] >= 2, "Failed not aggregated"
    assert [r["node"] for r in result["restarted"]] == ["node1"]
    assert uids(cluster)["node3"] == before["node3"], "the rollout went on after a failed node"
    assert pod_ready(cluster.pods("node1")[0]) and uids(cluster)["node1"] != before["node1"]


def test_unknown_node_and_missing_daemonset_fail_before_deleting(cluster):
    results = cluster.modules([("kube_proxy_restart", {"nodes": ["node1"]})])
    assert results[0]["failed"] and "DaemonSet kube-system/kube-proxy not found" in results[0]["msg"]
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    unknown, both = cluster.modules([
        ("kube_proxy_restart", {"nodes": ["node1", "node9"], **WAIT}),
        ("kube_proxy_restart", {"nodes": ["node1"], "all_nodes": True, **WAIT}),
    ])
    assert unknown["failed"] and "on node(s) node9" in unknown["msg"] and "node1, node2, node3" in unknown["msg"]
    assert both["failed"] and "not both" in both["msg"]
    assert uids(cluster) == before
    assert not cluster.writes()


def template_mounts(cluster):
    spec = cluster.get("DaemonSet", "kube-proxy")["spec"]["template"]["spec"]
    return ([m["mountPath"] for m in spec["containers"][0]["volumeMounts"]],
            sorted(v["name"] for v in spec["volumes"]))


def test_node_kernel_modules_leave_and_come_back_with_the_strategy_change(cluster):
    """kubeadm's DaemonSet mounts the node's /lib/modules; hiding it is one write together with the
    strategy, reaches only the node restarted afterwards, and a second run changes nothing."""
    seed_kubeadm_kube_proxy(cluster)
    mounts, volumes = template_mounts(cluster)
    assert "/lib/modules" in mounts and "lib-modules" in volumes

    checked = cluster.module("kube_proxy_restart", check=True, diff=True, update_strategy="OnDelete",
                             node_kernel_modules=False)
    assert checked["changed"] and checked["node_kernel_modules"] == {
        "before": True, "after": False, "mounts_before": ["kube-proxy:/lib/modules"]}
    assert checked["diff"]["after"]["node_kernel_modules"] == []
    assert template_mounts(cluster) == (mounts, volumes), "check mode changed the DaemonSet"

    cluster.mark()
    hidden = cluster.module("kube_proxy_restart", nodes=["node1"], update_strategy="OnDelete",
                            node_kernel_modules=False, **WAIT)
    assert hidden["changed"] and hidden["node_kernel_modules"]["after"] is False
    assert [w[0] for w in cluster.writes()] == ["patch", "delete"], "not one write to the DaemonSet"
    assert template_mounts(cluster) == ([m for m in mounts if m != "/lib/modules"],
                                        [v for v in volumes if v != "lib-modules"])
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"] == {"type": "OnDelete"}
    on_node = {p["spec"]["nodeName"]: [m["mountPath"] for m in p["spec"]["containers"][0]["volumeMounts"]]
               for p in cluster.pods()}
    assert "/lib/modules" not in on_node["node1"] and "/lib/modules" in on_node["node2"]
    assert all(pod_ready(p) for p in cluster.pods())

    cluster.mark()
    again = cluster.module("kube_proxy_restart", node_kernel_modules=False, update_strategy="OnDelete")
    assert not again["changed"] and not cluster.writes()

    shown = cluster.module("kube_proxy_restart", node_kernel_modules=True, update_strategy="RollingUpdate")
    assert shown["changed"] and shown["node_kernel_modules"] == {"before": False, "after": True, "mounts_before": []}
    spec = cluster.get("DaemonSet", "kube-proxy")["spec"]["template"]["spec"]
    assert {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert [v["hostPath"]["path"] for v in spec["volumes"] if v["name"] == "lib-modules"] == ["/lib/modules"]


def test_the_strategy_found_is_kept_in_the_daemonset_and_given_back(cluster):
    """``remember_update_strategy``: the strategy a change to OnDelete found - its rollingUpdate
    settings too - is kept in an annotation of the DaemonSet, so a later run (the switch that
    resumes after one that stopped half-way) gives it back with ``update_strategy: restore``; an
    annotation that does not hold a strategy fails before anything is written."""
    seed_kubeadm_kube_proxy(cluster)
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 0}}
    cluster.patch("DaemonSet", "kube-proxy", {"spec": {"updateStrategy": rolling}})
    found = cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"]
    assert found["rollingUpdate"]["maxUnavailable"] == "25%", found

    def annotation():
        return (cluster.get("DaemonSet", "kube-proxy")["metadata"].get("annotations") or {}).get(
            "kubeipvs.node/update-strategy-before")

    cluster.mark()
    kept = cluster.module("kube_proxy_restart", update_strategy="OnDelete", remember_update_strategy=True)
    assert kept["changed"] and kept["update_strategy"] == {"before": "RollingUpdate", "after": "OnDelete",
                                                           "remembered": found}, kept
    assert json.loads(annotation()) == found and len(cluster.writes()) == 1
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"] == {"type": "OnDelete"}
    # a run that resumes: nothing to change, the first strategy still kept
    cluster.mark()
    again = cluster.module("kube_proxy_restart", update_strategy="OnDelete", remember_update_strategy=True)
    assert not again["changed"] and again["update_strategy"]["remembered"] == found and not cluster.writes()

    checked = cluster.module("kube_proxy_restart", check=True, update_strategy="restore")
    assert checked["changed"] and checked["update_strategy"] == {"before": "OnDelete", "after": "RollingUpdate",
                                                                 "remembered": None}
    assert json.loads(annotation()) == found and cluster.writes() == [("patch", DAEMONSET + "?dryRun=All", 200)]
    cluster.mark()
    restored = cluster.module("kube_proxy_restart", update_strategy="restore")
    assert restored["changed"] and restored["update_strategy"]["after"] == "RollingUpdate"
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"] == found and annotation() is None
    cluster.mark()
    nothing = cluster.module("kube_proxy_restart", update_strategy="restore")
    assert not nothing["changed"] and not cluster.writes()
    # without remember_update_strategy (the kube_proxy role's choice of OnDelete): nothing kept
    plain = cluster.module("kube_proxy_restart", update_strategy="OnDelete")
    assert plain["changed"] and plain["update_strategy"]["remembered"] is None and annotation() is None

    # an annotation left while the strategy was set back by hand since: the strategy found now is kept
    by_hand = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3, "maxSurge": 0}}
    cluster.patch("DaemonSet", "kube-proxy", {"metadata": {"annotations": {
        "kubeipvs.node/update-strategy-before": json.dumps(rolling)}}, "spec": {"updateStrategy": by_hand}})
    renewed = cluster.module("kube_proxy_restart", update_strategy="OnDelete", remember_update_strategy=True)
    assert renewed["update_strategy"]["remembered"]["rollingUpdate"]["maxUnavailable"] == 3, renewed
    assert json.loads(annotation()) == renewed["update_strategy"]["remembered"]

    for text in ('{"type": "Sometimes"}', "not json", '{"type": "OnDelete", "rollingUpdate": {"maxSurge": 1}}',
                 '{"type": "RollingUpdate", "rollingUpdate": {"maxSurge": [1]}}', '{"type": "OnDelete", "x": 1}'):
        cluster.patch("DaemonSet", "kube-proxy", {"metadata": {"annotations": {
            "kubeipvs.node/update-strategy-before": text}}})
        cluster.mark()
        refused = cluster.module("kube_proxy_restart", update_strategy="restore")
        assert refused["failed"] and "kubeipvs.node/update-strategy-before" in refused["msg"], refused
        assert "remove the annotation" in refused["msg"] and not cluster.writes()
