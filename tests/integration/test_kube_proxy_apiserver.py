# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: F811 (the cluster fixture is imported from kube_fixtures, the tests take it as an argument)
"""The API test server answers the real client like a kube-apiserver would, and the collection's
client builder (plugins/module_utils/_k8s_client.py) picks its settings in the documented order.
These run in-process (no Ansible), so they take well under a second each."""

from __future__ import annotations

import json

import pytest
from kube_fixtures import (  # pylint: disable=unused-import
    KubeIpvsError,
    cluster,  # noqa: F401
    k8s_client,
    write_kubeconfig,
)

KubeApiError, KubeClient, build_configuration = k8s_client.KubeApiError, k8s_client.KubeClient, \
    k8s_client.build_configuration

DS = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"},
      "spec": {"selector": {"matchLabels": {"app": "x"}},
               "template": {"metadata": {"labels": {"app": "x"}},
                            "spec": {"containers": [{"name": "c", "image": "i:1"},
                                                    {"name": "d", "image": "j:1"}]}}}}


def client(cluster, **params):
    return KubeClient(build_configuration(dict({"kubeconfig": cluster.kubeconfig}, **params)), 10)


def failure(call):
    with pytest.raises(KubeApiError) as caught:
        call()
    return caught.value


def configmap(name, **data):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_status_objects_for_what_a_real_server_rejects(cluster):
    api = client(cluster)
    api.create("ConfigMap", configmap("a", k="v"), "default")
    cases = [
        (lambda: api.create("ConfigMap", configmap("a"), "default"), 409, "AlreadyExists",
         'configmaps "a" already exists'),
        (lambda: api.create("ConfigMap", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "default"),
         422, "Invalid", "metadata.name: Required value"),
        (lambda: api.create("ConfigMap", dict(configmap("b"), kind="Secret"), "default"), 400, "BadRequest",
         "do not match the expected v1 ConfigMap"),
        (lambda: api.create("ConfigMap", configmap("b"), "nope"), 404, "NotFound", 'namespaces "nope" not found'),
        (lambda: api.get("ConfigMap", "a", "default") and api.replace("ConfigMap", configmap("zz"), "default"),
         404, "NotFound", 'configmaps "zz" not found'),
        (lambda: api.create("ConfigMap", configmap("c", k=1), "default"), 400, "BadRequest", "cannot unmarshal"),
        (lambda: api.create("DaemonSet", dict(DS, spec=dict(DS["spec"], selector={})), "kube-system"),
         422, "Invalid", "spec.selector: Required value"),
        (lambda: api.create("DaemonSet", dict(DS, spec=dict(DS["spec"], selector={"matchLabels": {"app": "y"}})),
                            "kube-system"), 422, "Invalid", "`selector` does not match template `labels`"),
        (lambda: api.list("Pod", "default", field_selector="spec.foo=bar"), 400, "BadRequest",
         "field label not supported: spec.foo"),
    ]
    for call, code, reason, message in cases:
        error = failure(call)
        assert (error.status, error.reason) == (code, reason) and message in error.msg, (code, error.msg)
    assert api.get("ConfigMap", "b", "default") is None


def test_resource_versions_conflicts_and_dry_run(cluster):
    api = client(cluster)
    created = api.create("ConfigMap", configmap("a", k="v"), "default")
    same = api.replace("ConfigMap", created, "default")
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"], "a no-op bumped the RV"
    changed = api.replace("ConfigMap", dict(created, data={"k": "w"}), "default")
    assert int(changed["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = failure(lambda: api.replace("ConfigMap", dict(created, data={"k": "x"}), "default"))
    assert stale.status == 409 and "the object has been modified" in stale.msg
    dry = api.replace("ConfigMap", dict(changed, data={"k": "dry"}), "default", dry_run=True)
    assert dry["data"] == {"k": "dry"} and api.get("ConfigMap", "a", "default")["data"] == {"k": "w"}
    api.create("ConfigMap", configmap("b"), "default", dry_run=True)
    api.delete("ConfigMap", "a", "default", dry_run=True)
    assert api.get("ConfigMap", "b", "default") is None and api.get("ConfigMap", "a", "default") is not None


def test_merge_and_strategic_merge_patches(cluster):
    api = client(cluster)
    api.create("DaemonSet", DS, "kube-system")
    container = {"spec": {"template": {"spec": {"containers": [{"name": "d", "image": "j:2"}]}}}}
    strategic = api.patch("DaemonSet", "ds", container, "kube-system", strategic=True)
    assert [(c["name"], c["image"]) for c in strategic["spec"]["template"]["spec"]["containers"]] == [
        ("c", "i:1"), ("d", "j:2")]
    assert strategic["metadata"]["generation"] == 2
    merged = api.patch("DaemonSet", "ds", container, "kube-system")
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["d"], "merge patch keeps lists"
    removed = api.patch("DaemonSet", "ds", {"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": None}}},
                        "kube-system")
    assert removed["spec"]["updateStrategy"] == {"type": "OnDelete"}
    immutable = failure(lambda: api.patch("DaemonSet", "ds", {"spec": {"selector": {"matchLabels": {"app": "y"}},
                                                                       "template": {"metadata": {
                                                                           "labels": {"app": "y"}}}}},
                                          "kube-system"))
    assert immutable.status == 422 and "field is immutable" in immutable.msg


def test_selectors_pagination_and_garbage_collection(cluster):
    api = client(cluster)
    for index in range(7):
        cluster.add({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"cm{index}", "namespace": "default",
                                  "labels": {"tier": ["a", "b", "c"][index % 3]} if index < 6 else {}}})

    def names(**selectors):
        return [o["metadata"]["name"] for o in api.list("ConfigMap", "default", **selectors)]

    assert names(label_selector="tier=a") == ["cm0", "cm3"]
    assert names(label_selector="tier in (a,b)") == ["cm0", "cm1", "cm3", "cm4"]
    assert names(label_selector="tier notin (a,b)") == ["cm2", "cm5", "cm6"]
    assert names(label_selector="tier,tier!=c") == ["cm0", "cm1", "cm3", "cm4"]
    assert names(label_selector="!tier") == ["cm6"]
    assert names(field_selector="metadata.name=cm4") == ["cm4"]
    cluster.store.requests.clear()
    k8s_client.LIST_PAGE_SIZE, page_size = 3, k8s_client.LIST_PAGE_SIZE
    try:
        assert len(api.list("ConfigMap", "default")) == 7
    finally:
        k8s_client.LIST_PAGE_SIZE = page_size
    assert [q.get("continue") is not None for _m, _p, q in cluster.store.requests] == [False, True, True]

    api.create("DaemonSet", dict(DS, spec=dict(DS["spec"], template={"metadata": {"labels": {"app": "x"}},
                                                                     "spec": {"containers": [DS["spec"]["template"]
                                                                                             ["spec"]["containers"][0]]
                                                                              }})), "kube-system")
    cluster.wait_for(lambda: len(cluster.pods()) == 3)
    assert [p["metadata"]["name"] for p in api.list("Pod", "kube-system", field_selector="spec.nodeName=node2")] \
        == [p["metadata"]["name"] for p in cluster.pods("node2")]
    api.delete("DaemonSet", "ds", "kube-system")
    assert not cluster.pods(), "the DaemonSet's pods outlived it"


def test_auth_and_injected_failures(cluster, tmp_path):
    wrong = client(cluster, kubeconfig=str(write_kubeconfig(tmp_path / "w", cluster.server.url, "nope")))
    assert failure(wrong.version).status == 401
    viewer = client(cluster, kubeconfig=str(write_kubeconfig(tmp_path / "v", cluster.server.url, "viewer-token")))
    assert viewer.list("Node") and failure(lambda: viewer.delete("Node", "node1")).status == 403
    api = client(cluster)
    cluster.faults.errors = 1
    assert failure(api.version).status == 500
    assert api.version()["gitVersion"].startswith("v1.31")
    cluster.faults.unavailable = True
    assert failure(api.version).status == 503


def test_faults_through_the_test_endpoint(cluster):
    api = client(cluster)
    answer = api.request("POST", "/_test/faults", body={"never_ready_nodes": ["node2"], "conflicts": 2})
    assert answer == {"never_ready_nodes": ["node2"], "conflicts": 2, "errors": 0, "unavailable": False}
    assert cluster.faults.never_ready_nodes == {"node2"}


def test_client_settings_precedence(cluster, tmp_path):
    # kubeconfig alone; host and api_key override it; explicit host + token without a kubeconfig.
    assert client(cluster).version()
    other = write_kubeconfig(tmp_path / "other", "http://127.0.0.1:9", cluster.token)
    assert client(cluster, kubeconfig=str(other), host=cluster.server.url).version()
    assert failure(lambda: client(cluster, api_key="wrong").version()).status == 401
    assert KubeClient(build_configuration({"host": cluster.server.url, "api_key": cluster.token})).version()
    with pytest.raises(KubeIpvsError, match="no kubeconfig at"):
        build_configuration({"kubeconfig": str(tmp_path / "missing")})
    with pytest.raises(KubeIpvsError, match="cannot use kubeconfig"):
        build_configuration({"kubeconfig": cluster.kubeconfig, "context": "elsewhere"})
    broken = tmp_path / "broken"
    broken.write_text(json.dumps({"apiVersion": "v1", "kind": "Config"}))
    with pytest.raises(KubeIpvsError, match="cannot use kubeconfig"):
        build_configuration({"kubeconfig": str(broken)})
