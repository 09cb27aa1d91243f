# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's client builder (plugins/module_utils/_k8s_client.py) picks its settings in the
documented order, against the real API server. In-process (no Ansible), so they are quick."""

from __future__ import annotations

import json

import pytest
from kube_cluster import READER_TOKEN
from kube_fixtures import KubeIpvsError, k8s_client

KubeApiError, KubeClient, build_configuration = k8s_client.KubeApiError, k8s_client.KubeClient, \
    k8s_client.build_configuration


def client(cluster, **params):
    return KubeClient(build_configuration(dict({"kubeconfig": cluster.kubeconfig}, **params)), 10)


def failure(call):
    with pytest.raises(KubeApiError) as caught:
        call()
    return caught.value


def test_client_settings_precedence(cluster):
    # kubeconfig alone; host and api_key override it (a kubeconfig's refresh hook must not undo them).
    assert client(cluster).version()["gitVersion"] == cluster.kube.plane.info["kubernetes"]
    elsewhere = cluster.kubeconfig_for(cluster.token, server="https://127.0.0.1:9")
    assert client(cluster, kubeconfig=elsewhere, host=cluster.server).version()
    wrong = failure(lambda: client(cluster, api_key="wrong").version())
    assert (wrong.status, wrong.reason) == (401, "Unauthorized") and "401 Unauthorized" in wrong.msg
    reader = client(cluster, api_key=READER_TOKEN)
    assert reader.version(), "/version is public"
    forbidden = failure(lambda: reader.list("Node"))
    assert (forbidden.status, forbidden.reason) == (403, "Forbidden")
    assert 'User "reader" cannot list resource "nodes"' in forbidden.msg
    # explicit host + token (+ the CA) without a kubeconfig
    direct = KubeClient(build_configuration({"host": cluster.server, "api_key": cluster.token,
                                             "ca_cert": cluster.ca_cert}))
    assert sorted(node["metadata"]["name"] for node in direct.list("Node")) == ["node1", "node2", "node3"]
    with pytest.raises(KubeIpvsError, match="no kubeconfig at"):
        build_configuration({"kubeconfig": str(cluster.tmp_path / "missing")})
    with pytest.raises(KubeIpvsError, match="cannot use kubeconfig"):
        build_configuration({"kubeconfig": cluster.kubeconfig, "context": "elsewhere"})
    broken = cluster.tmp_path / "broken"
    broken.write_text(json.dumps({"apiVersion": "v1", "kind": "Config"}))
    with pytest.raises(KubeIpvsError, match="cannot use kubeconfig"):
        build_configuration({"kubeconfig": str(broken)})
    assert not cluster.writes()
