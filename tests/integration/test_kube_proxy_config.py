# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""kubeipvs.node.kube_proxy_config through the ansible CLI against the API test server."""

from __future__ import annotations

import socket

import yaml
from kube_fixtures import (  # pylint: disable=unused-import
    KUBEADM_CONFIG,
    cluster,  # noqa: F401
    seed_kubeadm_kube_proxy,
    write_kubeconfig,
)

IPVS = dict(mode="ipvs", ipvs_scheduler="rr", ipvs_strict_arp=True, conntrack_max_per_core=0,
            ipvs_tcp_timeout="15m", merge={"metricsBindAddress": "0.0.0.0:10249"})


def stored(cluster):
    configmap = cluster.get("ConfigMap", "kube-proxy")
    return configmap, yaml.safe_load(configmap["data"]["config.conf"])


def test_check_mode_writes_nothing_then_apply_then_idempotent(cluster):
    seed_kubeadm_kube_proxy(cluster)
    # One play, three tasks; the server's request log proves what each wrote.
    checked, applied, again = cluster.modules([
        ("kube_proxy_config", dict(IPVS, _check=True, _diff=True)),
        ("kube_proxy_config", dict(IPVS, _diff=True)),
        ("kube_proxy_config", dict(IPVS, _diff=True)),
    ])
    put = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
    assert cluster.writes() == [("PUT", put, {"dryRun": "All"}), ("PUT", put, {})], \
        "check mode wrote, or the idempotent run did"

    assert checked["changed"], checked
    assert checked["diff"]["before"] == KUBEADM_CONFIG
    assert "mode: ipvs" in checked["diff"]["after"]
    assert checked["diff"]["after"] == applied["diff"]["after"]

    assert applied["changed"] and applied["attempts"] == 1
    _configmap, config = stored(cluster)
    assert config["mode"] == "ipvs"
    assert config["ipvs"]["scheduler"] == "rr" and config["ipvs"]["strictARP"] is True
    assert config["ipvs"]["tcpTimeout"] == "15m0s", "an equal duration must keep its spelling"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["metricsBindAddress"] == "0.0.0.0:10249"
    # Everything else survived.
    original = yaml.safe_load(KUBEADM_CONFIG)
    for key in ("clientConnection", "clusterCIDR", "iptables", "configSyncPeriod", "nodePortAddresses"):
        assert config[key] == original[key]
    assert _configmap["data"]["kubeconfig.conf"] == "apiVersion: v1\nkind: Config\n"
    assert applied["config"] == config

    assert not again["changed"], again
    assert again["diff"]["before"] == again["diff"]["after"]


def test_read_only_run_returns_the_config(cluster):
    seed_kubeadm_kube_proxy(cluster)
    result = cluster.module("kube_proxy_config")
    assert not result["changed"]
    assert result["config"]["clusterCIDR"] == "10.244.0.0/16"


def test_conflicts_are_retried_and_bounded(cluster):
    seed_kubeadm_kube_proxy(cluster)
    cluster.faults.conflicts = 2
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["changed"] and result["attempts"] == 3, result
    assert stored(cluster)[1]["mode"] == "ipvs"

    cluster.faults.conflicts = 10
    failed = cluster.module("kube_proxy_config", mode="nftables", max_attempts=3)
    assert failed["failed"] and "gave up after 3 attempts" in failed["msg"], failed
    assert stored(cluster)[1]["mode"] == "ipvs"


def test_invalid_settings_fail_before_any_request(cluster):
    seed_kubeadm_kube_proxy(cluster)
    requests = len(cluster.store.requests)
    cases = [
        ({"mode": "ipvs2"}, "mode 'ipvs2' is not a kube-proxy mode"),
        ({"mode": "kernelspace"}, "exists only on Windows"),
        ({"ipvs_scheduler": "fastest"}, "ipvs.scheduler 'fastest'"),
        ({"ipvs_tcp_timeout": "15 minutes"}, "is not a duration"),
        ({"conntrack_min": -1}, "conntrack.min: -1 must be a whole number"),
        ({"ipvs_exclude_cidrs": ["10.0.0.0/33"]}, "is not a CIDR"),
        ({"mode": "ipvs", "merge": {"mode": "iptables"}}, "disagree"),
    ]
    results = cluster.modules([("kube_proxy_config", args) for args, _text in cases])
    for (args, text), result in zip(cases, results, strict=True):
        assert result.get("failed") and text in result["msg"], (args, result)
    assert len(cluster.store.requests) == requests, "invalid input reached the API"


def test_config_that_is_not_yaml_is_named(cluster):
    seed_kubeadm_kube_proxy(cluster, config_text="mode: [ipvs\n")
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["failed"]
    assert "ConfigMap kube-system/kube-proxy key config.conf is not valid YAML" in result["msg"]
    assert not cluster.writes()


def test_missing_configmap_and_key(cluster):
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["failed"] and "ConfigMap kube-system/kube-proxy not found" in result["msg"]
    seed_kubeadm_kube_proxy(cluster)
    wrong_key = cluster.module("kube_proxy_config", mode="ipvs", config_key="kube-proxy.yaml")
    assert wrong_key["failed"] and "no key 'kube-proxy.yaml'" in wrong_key["msg"]
    assert not cluster.writes()


def test_wrong_credentials_forbidden_unreachable_and_no_kubeconfig(cluster, tmp_path):
    seed_kubeadm_kube_proxy(cluster)
    bad = write_kubeconfig(tmp_path / "bad", cluster.server.url, "wrong-token")
    viewer = write_kubeconfig(tmp_path / "viewer", cluster.server.url, "viewer-token")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases = [
        ({"kubeconfig": str(bad)}, "401 Unauthorized"),
        ({"kubeconfig": str(viewer)}, 'User "viewer" cannot update resource "configmaps"'),
        ({"_auth": False, "host": f"http://127.0.0.1:{closed_port}", "api_key": "x"},
         "cannot reach the Kubernetes API"),
        ({"kubeconfig": str(tmp_path / "nope")}, "no kubeconfig at"),
        ({"kubeconfig": str(bad), "context": "elsewhere"}, "cannot use kubeconfig"),
    ]
    results = cluster.modules([("kube_proxy_config", dict(args, mode="ipvs")) for args, _text in cases])
    for (args, text), result in zip(cases, results, strict=True):
        assert result.get("failed") and text in result["msg"], (args, result)
    assert "403 Forbidden" in results[1]["msg"]
    assert stored(cluster)[1]["mode"] == ""


def test_server_errors_fail_clearly_and_write_nothing(cluster):
    seed_kubeadm_kube_proxy(cluster)
    cluster.faults.errors = 1
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["failed"] and "failed (500 InternalError): Internal error occurred" in result["msg"], result
    assert not cluster.writes()


def test_auth_from_the_k8s_auth_environment(cluster, tmp_path):
    seed_kubeadm_kube_proxy(cluster)
    host_and_token = {"K8S_AUTH_HOST": cluster.server.url, "K8S_AUTH_API_KEY": cluster.token}
    by_host, by_kubeconfig = cluster.modules([
        ("kube_proxy_config", {"_auth": False, "mode": "ipvs", "_environment": host_and_token}),
        ("kube_proxy_config", {"_auth": False, "mode": "ipvs",
                               "_environment": {"K8S_AUTH_KUBECONFIG": cluster.kubeconfig}}),
    ])
    assert by_host["changed"] and not by_kubeconfig["changed"], (by_host, by_kubeconfig)
    assert stored(cluster)[1]["mode"] == "ipvs"


def test_host_and_token_without_kubeconfig(cluster):
    seed_kubeadm_kube_proxy(cluster)
    result = cluster.module("kube_proxy_config", auth=False, host=cluster.server.url, api_key=cluster.token,
                            ipvs_exclude_cidrs=["10.0.0.0/24"])
    assert result["changed"], result
    assert stored(cluster)[1]["ipvs"]["excludeCIDRs"] == ["10.0.0.0/24"]
