# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""roles/kube_proxy in a play over three inventory nodes, against the API test server."""

from __future__ import annotations

import json

import yaml
from kube_fixtures import (  # pylint: disable=unused-import
    NODES,
    cluster,  # noqa: F401
    pod_ready,
    seed_kubeadm_kube_proxy,
)


def run_role(cluster, **role_vars):
    inventory = cluster.tmp_path / "inventory.ini"
    inventory.write_text("".join(f"{node} ansible_connection=local\n" for node in NODES))
    playbook = cluster.tmp_path / "role.yml"
    playbook.write_text(json.dumps([{
        "name": "kube-proxy in IPVS mode", "hosts": "all", "gather_facts": False,
        "roles": [{"role": "kubeipvs.node.kube_proxy",
                   "vars": dict({"kube_proxy_kubeconfig": cluster.kubeconfig, "kube_proxy_restart_poll_interval": 0.1,
                                 "kube_proxy_restart_timeout": 15}, **role_vars)}]}]))
    results = cluster.playbook(playbook, inventory)
    assert not [r for r in results if r.get("failed")], results
    return results


def uids(cluster):
    return {p["spec"]["nodeName"]: p["metadata"]["uid"] for p in cluster.pods()}


def test_configures_existing_kube_proxy_then_restarts_node_by_node(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    results = run_role(cluster, kube_proxy_ipvs_strict_arp=True, kube_proxy_ipvs_scheduler="wrr")
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["mode"] == "ipvs" and config["ipvs"]["scheduler"] == "wrr" and config["ipvs"]["strictARP"]
    assert config["conntrack"]["maxPerCore"] == 0
    restarted = next(r for r in results if "restarted" in r and not r.get("skipped") and r["changed"])
    assert [r["node"] for r in restarted["restarted"]] == list(NODES)
    after = uids(cluster)
    assert all(after[node] != before[node] for node in NODES)
    assert all(pod_ready(p) for p in cluster.pods())
    assert cluster.get("DaemonSet", "kube-proxy")["metadata"].get("labels", {}).get(
        "app.kubernetes.io/managed-by") is None, "the role adopted kubeadm's DaemonSet"

    again = run_role(cluster, kube_proxy_ipvs_strict_arp=True, kube_proxy_ipvs_scheduler="wrr")
    assert not [r for r in again if r.get("changed")], again
    assert uids(cluster) == after, "an unchanged configuration restarted kube-proxy"


def test_restart_nodes_from_the_api(cluster):
    seed_kubeadm_kube_proxy(cluster)
    before = uids(cluster)
    run_role(cluster, kube_proxy_restart_nodes_from="api", kube_proxy_update_strategy="OnDelete")
    after = uids(cluster)
    assert all(after[node] != before[node] for node in NODES)
    assert cluster.get("DaemonSet", "kube-proxy")["spec"]["updateStrategy"]["type"] == "OnDelete"


def test_deploys_kube_proxy_when_there_is_none(cluster):
    role_vars = {"kube_proxy_version": "v1.31.2", "kube_proxy_api_server": "https://10.0.0.10:6443",
                 "kube_proxy_cluster_cidr": "10.244.0.0/16", "kube_proxy_ipvs_tcp_timeout": "900s"}
    results = run_role(cluster, **role_vars)
    assert any(r.get("changed") and "objects" in r for r in results)
    config = yaml.safe_load(cluster.get("ConfigMap", "kube-proxy")["data"]["config.conf"])
    assert config["mode"] == "ipvs" and config["clusterCIDR"] == "10.244.0.0/16"
    assert config["ipvs"]["tcpTimeout"] == "900s" and config["conntrack"]["maxPerCore"] == 0
    cluster.wait_for(lambda: len(cluster.pods()) == len(NODES) and all(pod_ready(p) for p in cluster.pods()))
    again = run_role(cluster, **role_vars)
    assert not [r for r in again if r.get("changed")], again
