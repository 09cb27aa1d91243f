# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest
import yaml
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_manifests import (
    node_kernel_modules,
    with_node_kernel_modules,
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
    assert "lib-modules" not in mounts and "lib-modules" not in volumes  # see node_kernel_modules
    assert node_kernel_modules(spec) == []
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
    stored["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"] = 420
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


def kubeadm_pod_spec(**extra):
    spec = {"containers": [{"name": "kube-proxy", "volumeMounts": [
        {"mountPath": "/var/lib/kube-proxy", "name": "kube-proxy"},
        {"mountPath": "/run/xtables.lock", "name": "xtables-lock"},
        {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": True}]}],
        "volumes": [{"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                    {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                    {"name": "lib-modules", "hostPath": {"path": "/lib/modules", "type": ""}}]}
    spec.update(extra)
    return spec


def test_hiding_the_node_kernel_modules_removes_only_their_mount_and_volume():
    spec = kubeadm_pod_spec()
    assert node_kernel_modules(spec) == ["kube-proxy:/lib/modules"]
    hidden = with_node_kernel_modules(spec, False)
    assert node_kernel_modules(hidden) == []
    assert [m["name"] for m in hidden["containers"][0]["volumeMounts"]] == ["kube-proxy", "xtables-lock"]
    assert [v["name"] for v in hidden["volumes"]] == ["kube-proxy", "xtables-lock"]
    assert spec == kubeadm_pod_spec(), "the input was changed"
    assert with_node_kernel_modules(hidden, False) == hidden
    shown = with_node_kernel_modules(hidden, True)
    assert node_kernel_modules(shown) == ["kube-proxy:/lib/modules"]
    assert shown["volumes"][-1] == {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}
    assert with_node_kernel_modules(spec, True) == spec


def test_every_way_a_container_sees_the_modules_counts():
    spec = kubeadm_pod_spec()
    spec["containers"][0]["volumeMounts"][2]["mountPath"] = "/usr/lib/modules/"
    spec["initContainers"] = [{"name": "init", "volumeMounts": [{"mountPath": "/lib/modules/6.1.0", "name": "lib-modules"}]}]
    spec["volumes"].append({"name": "modules-load", "hostPath": {"path": "/usr/lib/modules-load.d"}})
    spec["containers"][0]["volumeMounts"].append({"mountPath": "/usr/lib/modules-load.d", "name": "modules-load"})
    # a configMap at the modules' path is the image's own business, not the node's modules
    spec["volumes"].append({"name": "cfg", "configMap": {"name": "x"}})
    spec["containers"][0]["volumeMounts"].append({"mountPath": "/lib/modules/extra", "name": "cfg"})
    assert node_kernel_modules(spec) == ["init:/lib/modules/6.1.0", "kube-proxy:/usr/lib/modules/"]
    hidden = with_node_kernel_modules(spec, False)
    assert node_kernel_modules(hidden) == [] and hidden["initContainers"][0]["volumeMounts"] == []
    assert [m["mountPath"] for m in hidden["containers"][0]["volumeMounts"]] == [
        "/var/lib/kube-proxy", "/run/xtables.lock", "/usr/lib/modules-load.d", "/lib/modules/extra"]
    assert "lib-modules" not in [v["name"] for v in hidden["volumes"]]


def test_a_host_folder_over_the_modules_cannot_be_hidden_apart():
    spec = kubeadm_pod_spec()
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["containers"][0]["volumeMounts"].append({"mountPath": "/usr", "name": "host"})
    with pytest.raises(ValueError, match=r"kube-proxy:/usr, a hostPath mount over /lib/modules"):
        with_node_kernel_modules(spec, False)


def test_showing_the_modules_needs_a_place_for_them():
    two = kubeadm_pod_spec(containers=[{"name": "a"}, {"name": "b"}], volumes=[])
    with pytest.raises(ValueError, match="no container named kube-proxy"):
        with_node_kernel_modules(two, True)
    taken = kubeadm_pod_spec()
    taken["containers"][0]["volumeMounts"].pop()
    taken["volumes"][-1] = {"name": "lib-modules", "emptyDir": {}}
    with pytest.raises(ValueError, match="volume named lib-modules"):
        with_node_kernel_modules(taken, True)
