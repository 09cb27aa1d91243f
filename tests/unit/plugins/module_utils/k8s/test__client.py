# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Building the Kubernetes client: any kubeconfig and any option is a clean failure, never a traceback."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s._client import client_from_module


class Module:
    """The one attribute client_from_module reads of an AnsibleModule."""

    def __init__(self, **params):
        self.params = dict({"kubeconfig": None, "context": None, "host": None, "api_key": None, "ca_cert": None,
                            "client_cert": None, "client_key": None, "validate_certs": None,
                            "request_timeout": 30}, **params)


@pytest.mark.parametrize("text", [
    "key: [unclosed", "just a string", "- a\n- b\n", '{"clusters": 5}', "a: " + "[" * 5000 + "]" * 5000,
    "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://x'}}]\n"
    "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\nusers: [{name: u, user: 7}]\n",
    "\x00\x01\x02", "",
])
def test_a_kubeconfig_that_is_not_one_fails_with_a_message(tmp_path, text):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubeIpvsError, match="cannot use kubeconfig"):
        client_from_module(Module(kubeconfig=str(path)))


@pytest.mark.parametrize("params, message", [
    ({"request_timeout": -1}, "request_timeout must be 1-86400"),
    ({"request_timeout": 0}, "request_timeout must be 1-86400"),
    ({"request_timeout": 10 ** 9}, "request_timeout must be 1-86400"),
    ({"host": "https://10.0.0.1:6443\r\nX-Injected: 1", "api_key": "t"}, "host holds a control character"),
    ({"host": "https://10.0.0.1:6443", "api_key": "token\nX-Injected: 1"}, "api_key holds a control character"),
])
def test_options_are_checked_before_a_client_exists(params, message):
    with pytest.raises(KubeIpvsError, match=message):
        client_from_module(Module(**params))
