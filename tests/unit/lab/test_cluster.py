"""The cluster script's pure parts: the build module it writes for a Kubernetes version."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "lab"
sys.path.insert(0, str(LAB))
spec = importlib.util.spec_from_file_location("cluster", LAB / "cluster.py")
cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cluster)

KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kube-proxy => ./staging/src/k8s.io/kube-proxy
)
"""


def test_build_module_pins_every_staging_module_to_its_published_twin():
    text = cluster.build_module("1.37.2", KUBERNETES_GOMOD)
    assert "go 1.26.0" in text
    assert "require k8s.io/kubernetes v1.37.2" in text
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.37.2" in text
    assert "\tk8s.io/kube-proxy => k8s.io/kube-proxy v0.37.2" in text
    assert "./staging" not in text


def test_version_variables_reach_both_version_packages():
    flags = cluster.ldflags("1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/component-base/version.gitMinor=35" in flags
    assert "-X k8s.io/client-go/pkg/version.gitVersion=v1.35.4" in flags


def test_a_new_version_or_recipe_is_a_new_cache_key():
    assert cluster.recipe_digest("1.37.2") != cluster.recipe_digest("1.36.3")


def test_node_addresses_and_images(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBEIPVS_LAB_CACHE", str(tmp_path))
    for tag in ("v1.37.2", "v1.34.4"):
        (tmp_path / "k8s" / tag).mkdir(parents=True)
        (tmp_path / "k8s" / tag / "kube-proxy").write_bytes(b"")
    assert cluster.node_addresses("node3")[:2] == [{"type": "InternalIP", "address": "192.168.200.3"},
                                                   {"type": "InternalIP", "address": "fd00:200::3"}]
    images = cluster.node_images()
    assert sorted(images) == ["registry.k8s.io/kube-proxy:v1.34.4", "registry.k8s.io/kube-proxy:v1.37.2"]
    assert images["registry.k8s.io/kube-proxy:v1.34.4"]["files"] == {
        "/usr/local/bin/kube-proxy": "/var/lib/kubeipvs-lab/k8s/v1.34.4/kube-proxy"}


def test_the_older_kube_proxies_proven_are_those_older_than_the_cluster(monkeypatch):
    monkeypatch.setenv("KUBEIPVS_K8S_VERSION", "1.37.2")
    assert cluster.kube_proxy_versions() == ("1.37.2", "1.36.3", "1.35.4", "1.34.4")
    monkeypatch.setenv("KUBEIPVS_K8S_VERSION", "v1.35.4")
    assert cluster.kube_proxy_versions() == ("1.35.4", "1.34.4")  # never one newer than the API server


def test_a_kube_proxy_alone_is_another_recipe_than_the_whole_release():
    assert cluster.recipe_digest("1.36.3", ("kube-proxy",), etcd=False) != cluster.recipe_digest("1.36.3")
