# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kubeipvs.node.kube_proxy_config through the ansible CLI against the real API server. kubeadm's
objects are seeded with a DaemonSet that selects no node: these tests need the ConfigMap only."""

from __future__ import annotations

import socket

import yaml
from kube_cluster import READER_TOKEN
from kube_fixtures import KUBEADM_CONFIG, KUBEADM_KUBECONFIG, Request, seed_kubeadm_kube_proxy

IPVS = dict(mode="ipvs", ipvs_scheduler="rr", ipvs_strict_arp=True, conntrack_max_per_core=0,
            ipvs_tcp_timeout="15m", merge={"metricsBindAddress": "0.0.0.0:10249"})
CONFIGMAP = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"


def stored(cluster):
    configmap = cluster.get("ConfigMap", "kube-proxy")
    return configmap, yaml.safe_load(configmap["data"]["config.conf"])


def test_check_mode_writes_nothing_then_apply_then_idempotent(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    # One play, three tasks; the API server's audit log proves what each sent.
    checked, applied, again = cluster.modules([
        ("kube_proxy_config", dict(IPVS, _check=True, _diff=True)),
        ("kube_proxy_config", dict(IPVS, _diff=True)),
        ("kube_proxy_config", dict(IPVS, _diff=True)),
    ])
    assert cluster.writes() == [("update", CONFIGMAP + "?dryRun=All", 200), ("update", CONFIGMAP, 200)], \
        "check mode wrote, or the idempotent run did"

    assert checked["changed"], checked
    assert checked["diff"]["before"] == KUBEADM_CONFIG
    assert "mode: ipvs" in checked["diff"]["after"]
    assert checked["diff"]["after"] == applied["diff"]["after"]

    assert applied["changed"] and applied["attempts"] == 1
    configmap, config = stored(cluster)
    assert config["mode"] == "ipvs"
    assert config["ipvs"]["scheduler"] == "rr" and config["ipvs"]["strictARP"] is True
    assert config["ipvs"]["tcpTimeout"] == "15m0s", "an equal duration must keep its spelling"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["metricsBindAddress"] == "0.0.0.0:10249"
    # Everything else survived.
    original = yaml.safe_load(KUBEADM_CONFIG)
    for key in ("clientConnection", "clusterCIDR", "iptables", "configSyncPeriod", "nodePortAddresses"):
        assert config[key] == original[key]
    assert configmap["data"]["kubeconfig.conf"] == KUBEADM_KUBECONFIG.format(server=cluster.kube.plane.node_server)
    assert configmap["metadata"]["labels"] == {"app": "kube-proxy"}
    assert applied["config"] == config

    assert not again["changed"], again
    assert again["diff"]["before"] == again["diff"]["after"]


def test_read_only_run_returns_the_config(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    result = cluster.module("kube_proxy_config")
    assert not result["changed"]
    assert result["config"]["clusterCIDR"] == "10.244.0.0/16"
    # what kube-proxy runs with, under the collection's names (kubeadm leaves mode and bit unset)
    assert result["settings"]["cluster_cidr"] == "10.244.0.0/16" and result["settings"]["mode"] == "iptables"
    assert result["settings"]["masquerade_bit"] == {"iptables": 14, "ipvs": 14, "nftables": 14}
    assert cluster.requests() == [("get", CONFIGMAP, 200)]


def test_conflicts_are_retried_and_bounded(cluster):
    """Real 409s: the fault proxy changes the ConfigMap just before it forwards each update."""
    seed_kubeadm_kube_proxy(cluster, run=False)
    proxy = cluster.fault_proxy()
    proxy.conflicts = 2
    result = cluster.module("kube_proxy_config", mode="ipvs", kubeconfig=proxy.kubeconfig)
    assert result["changed"] and result["attempts"] == 3, result
    assert stored(cluster)[1]["mode"] == "ipvs"
    conflict, done = ("update", CONFIGMAP, 409), ("update", CONFIGMAP, 200)
    assert cluster.writes() == [conflict, conflict, done], "each 409 is the API server's own"
    # each attempt read the ConfigMap again before its update
    assert [r.verb for r in cluster.requests()] == ["get", "update"] * 3

    cluster.mark()
    proxy.conflicts = 10
    failed = cluster.module("kube_proxy_config", mode="nftables", max_attempts=3, kubeconfig=proxy.kubeconfig)
    assert failed["failed"] and "gave up after 3 attempts" in failed["msg"], failed
    assert cluster.writes() == [conflict] * 3 and proxy.conflicts == 7, "not bounded by max_attempts"
    assert stored(cluster)[1]["mode"] == "ipvs"


def test_invalid_settings_fail_before_any_request(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
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
    assert cluster.requests() == [], "invalid input reached the API"


def test_config_that_is_not_yaml_is_named(cluster):
    seed_kubeadm_kube_proxy(cluster, config_text="mode: [ipvs\n", run=False)
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["failed"]
    assert "ConfigMap kube-system/kube-proxy key config.conf is not valid YAML" in result["msg"]
    assert not cluster.writes()


def test_missing_configmap_and_key(cluster):
    result = cluster.module("kube_proxy_config", mode="ipvs")
    assert result["failed"] and "ConfigMap kube-system/kube-proxy not found" in result["msg"]
    seed_kubeadm_kube_proxy(cluster, run=False)
    wrong_key = cluster.module("kube_proxy_config", mode="ipvs", config_key="kube-proxy.yaml")
    assert wrong_key["failed"] and "no key 'kube-proxy.yaml'" in wrong_key["msg"]
    assert cluster.requests() == [("get", CONFIGMAP, 404), ("get", CONFIGMAP, 200)]


def test_wrong_credentials_forbidden_unreachable_and_no_kubeconfig(cluster):
    """401 for a token the API server does not know; 403 from RBAC for ``reader``, who may read
    kube-system (ClusterRole view) but not write; a closed port; no kubeconfig; a missing context."""
    seed_kubeadm_kube_proxy(cluster, run=False)
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "test-reader-view", "namespace": "kube-system"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "reader"}]})
    bad = cluster.kubeconfig_for("wrong-token")
    reader = cluster.kubeconfig_for(READER_TOKEN)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases = [
        ({"kubeconfig": bad}, "401 Unauthorized"),
        ({"kubeconfig": reader}, 'User "reader" cannot update resource "configmaps" in API group "" in the '
                                 'namespace "kube-system"'),
        ({"_auth": False, "host": f"https://127.0.0.1:{closed_port}", "api_key": "x"},
         "cannot reach the Kubernetes API"),
        ({"kubeconfig": str(cluster.tmp_path / "nope")}, "no kubeconfig at"),
        ({"kubeconfig": bad, "context": "elsewhere"}, "cannot use kubeconfig"),
    ]
    results = cluster.modules([("kube_proxy_config", dict(args, mode="ipvs")) for args, _text in cases])
    for (args, text), result in zip(cases, results, strict=True):
        assert result.get("failed") and text in result["msg"], (args, result)
    assert "403 Forbidden" in results[1]["msg"]
    assert cluster.requests("reader") == [("get", CONFIGMAP, 200), ("update", CONFIGMAP, 403)]
    assert stored(cluster)[1]["mode"] == ""


def test_an_untrusted_server_certificate_fails_clearly(cluster):
    """host and api_key without ca_cert: the lab's CA is not among the system's."""
    seed_kubeadm_kube_proxy(cluster, run=False)
    result = cluster.module("kube_proxy_config", auth=False, host=cluster.server, api_key=cluster.token, mode="ipvs")
    assert result["failed"] and "CERTIFICATE_VERIFY_FAILED" in result["msg"], result
    assert result.get("host") == cluster.server and cluster.server in result["msg"], result
    assert not cluster.writes()


def test_server_errors_fail_clearly_and_write_nothing(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    proxy = cluster.fault_proxy()
    proxy.errors = 1
    result = cluster.module("kube_proxy_config", mode="ipvs", kubeconfig=proxy.kubeconfig)
    assert result["failed"] and "failed (500 InternalError): Internal error occurred" in result["msg"], result
    assert [status for _method, _path, status in proxy.requests] == [500], "went on after a server error"
    assert cluster.requests() == [], "the failed request reached the API server"


def test_auth_from_the_k8s_auth_environment(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    host_and_token = {"K8S_AUTH_HOST": cluster.server, "K8S_AUTH_API_KEY": cluster.token,
                      "K8S_AUTH_SSL_CA_CERT": cluster.ca_cert}
    by_host, by_kubeconfig = cluster.modules([
        ("kube_proxy_config", {"_auth": False, "mode": "ipvs", "_environment": host_and_token}),
        ("kube_proxy_config", {"_auth": False, "mode": "ipvs",
                               "_environment": {"K8S_AUTH_KUBECONFIG": cluster.kubeconfig}}),
    ])
    assert by_host["changed"] and not by_kubeconfig["changed"], (by_host, by_kubeconfig)
    assert stored(cluster)[1]["mode"] == "ipvs"
    assert cluster.writes() == [Request("update", CONFIGMAP, 200)]


def test_host_and_token_without_kubeconfig(cluster):
    seed_kubeadm_kube_proxy(cluster, run=False)
    result = cluster.module("kube_proxy_config", auth=False, host=cluster.server, api_key=cluster.token,
                            ca_cert=cluster.ca_cert, ipvs_exclude_cidrs=["10.0.0.0/24"])
    assert result["changed"], result
    assert stored(cluster)[1]["ipvs"]["excludeCIDRs"] == ["10.0.0.0/24"]
