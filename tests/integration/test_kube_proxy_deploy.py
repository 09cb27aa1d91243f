# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""kubeipvs.node.kube_proxy (deploy / remove) against the API test server."""

from __future__ import annotations

import yaml
from kube_fixtures import (  # pylint: disable=unused-import
    NODES,
    cluster,  # noqa: F401
    pod_ready,
    seed_kubeadm_kube_proxy,
)

DEPLOY = {"version": "v1.31.2", "api_server": "https://10.0.0.10:6443",
          "config": {"mode": "ipvs", "clusterCIDR": "10.244.0.0/16", "ipvs": {"scheduler": "rr", "strictARP": True}}}
KINDS = ["ServiceAccount", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]


def actions(result):
    return {o["kind"]: o["action"] for o in result["objects"]}


def test_deploy_check_idempotence_upgrade_and_remove(cluster):
    checked, = cluster.modules([("kube_proxy", dict(DEPLOY, _check=True, _diff=True))])
    assert checked["changed"] and actions(checked) == dict.fromkeys(KINDS, "created"), checked
    assert cluster.get("DaemonSet", "kube-proxy") is None and cluster.get("ConfigMap", "kube-proxy") is None
    assert cluster.get("ClusterRoleBinding", "kubeadm:node-proxier") is None
    assert all(w[2].get("dryRun") == "All" for w in cluster.writes())

    applied, again = cluster.modules([("kube_proxy", DEPLOY), ("kube_proxy", dict(DEPLOY, _diff=True))])
    assert applied["changed"] and actions(applied) == dict.fromkeys(KINDS, "created"), applied
    assert not again["changed"] and actions(again) == dict.fromkeys(KINDS, "unchanged"), again
    assert again["diff"]["before"] == again["diff"]["after"]
    assert again["config"]["mode"] == "ipvs"

    daemonset = cluster.get("DaemonSet", "kube-proxy")
    pod_spec = daemonset["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == "registry.k8s.io/kube-proxy:v1.31.2"
    assert pod_spec["hostNetwork"] and pod_spec["serviceAccountName"] == "kube-proxy"
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    binding = cluster.get("ClusterRoleBinding", "kubeadm:node-proxier")
    assert binding["roleRef"]["name"] == "system:node-proxier"
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["mode"] == "ipvs" and config["ipvs"]["strictARP"] is True
    assert config["clientConnection"]["kubeconfig"] == "/var/lib/kube-proxy/kubeconfig.conf"
    cluster.wait_for(lambda: len(cluster.pods()) == len(NODES) and all(pod_ready(p) for p in cluster.pods()))

    # A controlled switch set OnDelete: deploying again must not undo it.
    cluster.add(dict(daemonset, spec=dict(daemonset["spec"], updateStrategy={"type": "OnDelete"})))
    upgraded, = cluster.modules([("kube_proxy", dict(DEPLOY, version="v1.32.0",
                                                     config={"ipvs": {"scheduler": "wrr"}}, _diff=True))])
    assert upgraded["changed"], upgraded
    assert actions(upgraded) == {"ServiceAccount": "unchanged", "ClusterRoleBinding": "unchanged",
                                 "ConfigMap": "updated", "DaemonSet": "updated"}
    image_path = "DaemonSet kube-system/kube-proxy"
    new_template = upgraded["diff"]["after"][image_path]["spec"]["template"]
    assert new_template["spec"]["containers"][0]["image"].endswith("v1.32.0")
    daemonset = cluster.get("DaemonSet", "kube-proxy")
    assert daemonset["spec"]["updateStrategy"]["type"] == "OnDelete"
    assert daemonset["metadata"]["generation"] == 2
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["ipvs"]["scheduler"] == "wrr" and config["mode"] == "ipvs", "the merge lost a field"

    removed_check, removed, gone = cluster.modules([
        ("kube_proxy", {"state": "absent", "_check": True}), ("kube_proxy", {"state": "absent"}),
        ("kube_proxy", {"state": "absent"})])
    assert removed_check["changed"] and actions(removed_check)["DaemonSet"] == "deleted"
    assert removed["changed"] and set(actions(removed).values()) == {"deleted"}
    assert not gone["changed"] and set(actions(gone).values()) == {"absent"}
    assert cluster.get("DaemonSet", "kube-proxy") is None and not cluster.pods(), "pods were not garbage collected"


def test_kubeadm_objects_are_left_alone(cluster):
    seed_kubeadm_kube_proxy(cluster)
    configmap = cluster.get("ConfigMap", "kube-proxy")
    daemonset = cluster.get("DaemonSet", "kube-proxy")
    present, absent = cluster.modules([("kube_proxy", DEPLOY), ("kube_proxy", {"state": "absent"})])
    assert actions(present) == {"ServiceAccount": "foreign", "ClusterRoleBinding": "created",
                                "ConfigMap": "foreign", "DaemonSet": "foreign"}, present
    assert any("not created by kubeipvs.node" in w for w in present["warnings"])
    assert present["config"] is None
    assert actions(absent) == {"ServiceAccount": "foreign", "ClusterRoleBinding": "deleted",
                               "ConfigMap": "foreign", "DaemonSet": "foreign"}
    assert cluster.get("ConfigMap", "kube-proxy") == configmap
    assert cluster.get("DaemonSet", "kube-proxy")["spec"] == daemonset["spec"]


def test_bad_input_writes_nothing(cluster):
    cases = [
        ({"api_server": "https://10.0.0.10:6443"}, "version is required"),
        ({"version": "v1.31.2"}, "api_server is required to create ConfigMap kube-system/kube-proxy"),
        (dict(DEPLOY, config={"mode": "ipvs2"}), "mode 'ipvs2' is not a kube-proxy mode"),
        (dict(DEPLOY, version="v1.31 2"), "is not a valid image tag"),
        (dict(DEPLOY, api_server="10.0.0.10:6443"), "must be a URL"),
    ]
    results = cluster.modules([("kube_proxy", args) for args, _text in cases])
    for (args, text), result in zip(cases, results, strict=True):
        assert result.get("failed") and text in result["msg"], (args, result)
    assert not cluster.writes()
