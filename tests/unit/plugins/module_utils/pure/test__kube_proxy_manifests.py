# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import yaml
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_manifests import (
    cluster_role_binding,
    config_map,
    contains,
    daemon_set,
    health_endpoint,
    managed_view,
    overlay,
    owned,
)


def kube_proxy_daemon_set():
    return daemon_set("kube-system", "kube-proxy", "registry.k8s.io/kube-proxy:v1.31.2", "kube-proxy",
                      "config.conf", "kube-proxy", {"kubernetes.io/os": "linux"})


def test_daemon_set_is_shaped_like_kubeadms():
    spec = kube_proxy_daemon_set()["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf",
                                    "--hostname-override=$(NODE_NAME)"]
    assert container["securityContext"] == {"privileged": True}
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert volumes["kube-proxy"]["configMap"]["name"] == "kube-proxy"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["lib-modules"] == {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": True}
    assert mounts["kube-proxy"]["mountPath"] == "/var/lib/kube-proxy"


def test_readiness_comes_from_kube_proxys_own_healthz():
    probe = kube_proxy_daemon_set()["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": 10256, "scheme": "HTTP"}
    assert health_endpoint("") == (None, 10256)
    assert health_endpoint("0.0.0.0:10256") == (None, 10256)
    assert health_endpoint("[::]:10300") == (None, 10300)
    assert health_endpoint("127.0.0.1:10266") == ("127.0.0.1", 10266)
    assert health_endpoint("[fd00::1]:10256") == ("fd00::1", 10256)
    local = daemon_set("kube-system", "kube-proxy", "i:v1", "kube-proxy", "config.conf", "kube-proxy", {},
                       healthz_bind_address="127.0.0.1:10266")
    assert local["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["host"] == "127.0.0.1"


def test_rbac_and_configmap():
    binding = cluster_role_binding("kubeadm:node-proxier", "system:node-proxier", "kube-system", "kube-proxy")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:node-proxier"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kube-proxy", "namespace": "kube-system"}]
    configmap = config_map("kube-system", "kube-proxy", "config.conf", "mode: ipvs\n", "https://10.0.0.1:6443")
    kubeconfig = yaml.safe_load(configmap["data"]["kubeconfig.conf"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.0.0.1:6443"
    assert kubeconfig["users"][0]["user"]["tokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert owned(configmap) and not owned({"metadata": {"labels": {"app": "kube-proxy"}}})


def test_server_defaults_are_no_change_but_managed_fields_are():
    desired = kube_proxy_daemon_set()
    stored = overlay(desired, {})
    stored["metadata"]["uid"] = "u1"
    stored["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    stored["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    stored["spec"]["template"]["spec"]["volumes"][2]["hostPath"]["type"] = ""
    assert contains(stored, desired)

    newer = kube_proxy_daemon_set()
    newer["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.k8s.io/kube-proxy:v1.32.0"
    assert not contains(stored, newer)
    updated = overlay(stored, newer)
    assert contains(updated, newer)
    container = updated["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log", "a server default was dropped"
    assert updated["metadata"]["uid"] == "u1"
    assert managed_view(stored, newer)["spec"]["template"]["spec"]["containers"][0]["image"].endswith("v1.31.2")


def test_list_items_with_another_name_are_replaced_whole():
    stored = {"env": [{"name": "OLD", "value": "1"}]}
    desired = {"env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    assert overlay(stored, desired) == desired
    assert not contains(stored, desired)
    assert not contains({"env": []}, desired)
