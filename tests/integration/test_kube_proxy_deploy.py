# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.kube_proxy (deploy / remove) against the real API server, with the real kube-proxy
running from the DaemonSet's pods on the three nodes.

The nodes are network namespaces of this host, whose kernel has no IPVS: kube-proxy in IPVS mode
exits there at start (test_kube_proxy_role.py shows it). So the deployment under test configures
``mode: iptables`` - with the IPVS settings in the configuration all the same - and ``conntrack:
{maxPerCore: 0}`` (nf_conntrack_max is read-only in a namespace); the pods are Ready only once the
real kube-proxy answers its /healthz, which it does after programming its node."""

from __future__ import annotations

import yaml
from kube_fixtures import KUBE_PROXY_IMAGE, seed_kubeadm_kube_proxy

VERSION = KUBE_PROXY_IMAGE.rsplit(":", 1)[1]
KINDS = ["ServiceAccount", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]


def deploy(cluster, **overrides):
    return dict({"version": VERSION, "api_server": cluster.kube.plane.node_server,
                 "config": {"mode": "iptables", "clusterCIDR": "10.244.0.0/16", "conntrack": {"maxPerCore": 0},
                            "ipvs": {"scheduler": "rr", "strictARP": True}}}, **overrides)


def actions(result):
    return {o["kind"]: o["action"] for o in result["objects"]}


def uids(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in cluster.pods()}


def test_deploy_check_apply_upgrade_and_remove(cluster):
    checked, = cluster.modules([("kube_proxy", dict(deploy(cluster), _check=True, _diff=True))])
    assert checked["changed"] and actions(checked) == dict.fromkeys(KINDS, "created"), checked
    assert cluster.get("DaemonSet", "kube-proxy") is None and cluster.get("ConfigMap", "kube-proxy") is None
    assert cluster.get("ClusterRoleBinding", "kubeadm:node-proxier") is None
    checked_writes = cluster.writes()
    assert [w.verb for w in checked_writes] == ["create"] * 4 and all(w.dry_run for w in checked_writes), \
        checked_writes

    cluster.mark()
    applied = cluster.module("kube_proxy", **deploy(cluster))
    assert applied["changed"] and actions(applied) == dict.fromkeys(KINDS, "created"), applied
    assert applied["config"]["mode"] == "iptables"
    writes = cluster.writes()
    assert [(w.verb, w.dry_run, w.code) for w in writes] == [("create", False, 201)] * 4, writes

    daemonset = cluster.get("DaemonSet", "kube-proxy")
    pod_spec = daemonset["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == KUBE_PROXY_IMAGE
    assert pod_spec["hostNetwork"] and pod_spec["serviceAccountName"] == "kube-proxy"
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    binding = cluster.get("ClusterRoleBinding", "kubeadm:node-proxier")
    assert binding["roleRef"]["name"] == "system:node-proxier"
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["mode"] == "iptables" and config["ipvs"]["strictARP"] is True
    assert config["clientConnection"]["kubeconfig"] == "/var/lib/kube-proxy/kubeconfig.conf"
    # the real kube-proxy runs on every node from these objects, Ready from its own /healthz
    cluster.wait_for_kube_proxy()
    running = uids(cluster)

    # A controlled switch set OnDelete: deploying again must not undo it.
    cluster.patch("DaemonSet", "kube-proxy", {"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": None}}})
    generation = cluster.get("DaemonSet", "kube-proxy")["metadata"]["generation"]
    cluster.mark()
    upgraded, = cluster.modules([("kube_proxy", dict(deploy(cluster, version="v1.37.3",
                                                            config={"ipvs": {"scheduler": "wrr"}}), _diff=True))])
    assert upgraded["changed"], upgraded
    assert actions(upgraded) == {"ServiceAccount": "unchanged", "ClusterRoleBinding": "unchanged",
                                 "ConfigMap": "updated", "DaemonSet": "updated"}
    new_template = upgraded["diff"]["after"]["DaemonSet kube-system/kube-proxy"]["spec"]["template"]
    assert new_template["spec"]["containers"][0]["image"].endswith(":v1.37.3")
    assert [(w.verb, w.uri.rsplit("/", 2)[-2]) for w in cluster.writes()] == [
        ("update", "configmaps"), ("update", "daemonsets")]
    daemonset = cluster.get("DaemonSet", "kube-proxy")
    assert daemonset["spec"]["updateStrategy"]["type"] == "OnDelete"
    assert daemonset["metadata"]["generation"] == generation + 1
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["ipvs"]["scheduler"] == "wrr" and config["mode"] == "iptables", "the merge lost a field"
    # OnDelete, as the real DaemonSet controller honours it: the new template replaced no pod.
    cluster.wait_for(lambda: cluster.get("DaemonSet", "kube-proxy")["status"].get("observedGeneration")
                     == generation + 1)
    assert uids(cluster) == running
    assert cluster.get("DaemonSet", "kube-proxy")["status"].get("updatedNumberScheduled", 0) == 0

    cluster.mark()
    removed_check, removed, gone = cluster.modules([
        ("kube_proxy", {"state": "absent", "_check": True}), ("kube_proxy", {"state": "absent"}),
        ("kube_proxy", {"state": "absent"})])
    assert removed_check["changed"] and actions(removed_check)["DaemonSet"] == "deleted"
    assert removed["changed"] and set(actions(removed).values()) == {"deleted"}
    assert not gone["changed"] and set(actions(gone).values()) == {"absent"}
    writes = cluster.writes()
    assert [(w.verb, w.dry_run) for w in writes] == [("delete", True)] * 4 + [("delete", False)] * 4, writes
    assert cluster.get("DaemonSet", "kube-proxy") is None
    # the garbage collector deletes the pods, each node's runner stops its kube-proxy
    cluster.wait_for(lambda: not cluster.pods(terminating=True))


def test_a_second_deploy_changes_nothing(cluster):
    applied, again = cluster.modules([("kube_proxy", deploy(cluster)),
                                      ("kube_proxy", dict(deploy(cluster), _diff=True))])
    assert applied["changed"] and actions(applied) == dict.fromkeys(KINDS, "created"), applied
    assert actions(again) == dict.fromkeys(KINDS, "unchanged"), actions(again)
    assert not again["changed"] and again["diff"]["before"] == again["diff"]["after"]
    assert [w.verb for w in cluster.writes()] == ["create"] * 4, "the second run wrote"


def written_by_clients(obj):
    """``obj`` without what the real controllers write through the status subresource at any time
    (the DaemonSet controller's first sync sets ``status.observedGeneration``, bumping
    ``resourceVersion``): every other field changes only when a client writes the object."""
    metadata = {key: value for key, value in obj["metadata"].items() if key != "resourceVersion"}
    metadata["managedFields"] = [entry for entry in metadata.get("managedFields", [])
                                 if entry.get("subresource") != "status"]
    return dict({key: value for key, value in obj.items() if key != "status"}, metadata=metadata)


def test_kubeadm_objects_are_left_alone(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    kinds = [("ServiceAccount", "kube-proxy"), ("ClusterRoleBinding", "kubeadm:node-proxier"),
             ("ConfigMap", "kube-proxy"), ("DaemonSet", "kube-proxy")]
    before = {kind: written_by_clients(cluster.get(kind, name)) for kind, name in kinds}
    present, absent = cluster.modules([("kube_proxy", deploy(cluster)), ("kube_proxy", {"state": "absent"})])
    assert actions(present) == dict.fromkeys(KINDS, "foreign"), present
    assert any("not created by kubeipvs.node" in w for w in present["warnings"])
    assert present["config"] is None and not present["changed"]
    assert actions(absent) == dict.fromkeys(KINDS, "foreign") and not absent["changed"]
    assert {kind: written_by_clients(cluster.get(kind, name)) for kind, name in kinds} == before
    assert not cluster.writes()

    # Without kubeadm's binding the module creates its own, and removes only that one.
    cluster.call("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubeadm:node-proxier")
    cluster.mark()
    present, absent = cluster.modules([("kube_proxy", deploy(cluster)), ("kube_proxy", {"state": "absent"})])
    assert actions(present) == {"ServiceAccount": "foreign", "ClusterRoleBinding": "created",
                                "ConfigMap": "foreign", "DaemonSet": "foreign"}, present
    assert actions(absent) == {"ServiceAccount": "foreign", "ClusterRoleBinding": "deleted",
                               "ConfigMap": "foreign", "DaemonSet": "foreign"}, absent
    binding = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    assert cluster.writes() == [("create", binding, 201), ("delete", binding + "/kubeadm:node-proxier", 200)]
    assert cluster.get("ClusterRoleBinding", "kubeadm:node-proxier") is None
    for kind, name in kinds:
        if kind != "ClusterRoleBinding":
            assert written_by_clients(cluster.get(kind, name)) == before[kind], kind


def test_bad_input_writes_nothing(cluster):
    cases = [
        ({"api_server": "https://10.0.0.10:6443"}, "version is required"),
        ({"version": VERSION}, "api_server is required to create ConfigMap kube-system/kube-proxy"),
        (deploy(cluster, config={"mode": "ipvs2"}), "mode 'ipvs2' is not a kube-proxy mode"),
        (deploy(cluster, version="v1.31 2"), "is not a valid image tag"),
        (deploy(cluster, api_server="10.0.0.10:6443"), "must be a URL"),
    ]
    results = cluster.modules([("kube_proxy", args) for args, _text in cases])
    for (args, text), result in zip(cases, results, strict=True):
        assert result.get("failed") and text in result["msg"], (args, result)
    assert not cluster.writes()


def test_named_options_set_their_fields_as_kube_proxy_config_s_do(cluster):
    base = deploy(cluster, config={"conntrack": {"maxPerCore": 0}, "ipvs": {"strictARP": True}})
    checked, clash, bad = cluster.modules([
        ("kube_proxy", dict(base, mode="iptables", ipvs_scheduler="wrr", ipvs_exclude_cidrs=["192.0.2.0/24"],
                            cluster_cidr="10.244.0.0/16", conntrack_tcp_close_wait_timeout="1h0m0s", _check=True)),
        ("kube_proxy", dict(base, ipvs_strict_arp=False, _check=True)),
        ("kube_proxy", dict(base, ipvs_scheduler="twos", _check=True)),
    ])
    config = checked["config"]
    assert (config["mode"], config["clusterCIDR"], config["ipvs"]["scheduler"], config["ipvs"]["excludeCIDRs"],
            config["ipvs"]["strictARP"], config["conntrack"]["maxPerCore"],
            config["conntrack"]["tcpCloseWaitTimeout"]) == (
        "iptables", "10.244.0.0/16", "wrr", ["192.0.2.0/24"], True, 0, "1h0m0s"), checked
    assert clash.get("failed") and "option ipvs_strict_arp (False) and config.ipvs.strictARP (True) disagree" \
        in clash["msg"], clash
    assert bad.get("failed") and "twos" in bad["msg"], bad
    assert all(w.dry_run for w in cluster.writes())
