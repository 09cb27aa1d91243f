# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest
import yaml
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_config import (
    default_config,
    merge_config,
    parse_config,
    parse_duration,
    patch_from_options,
    render_config,
    validate_config,
)

STORED = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# a comment
clusterCIDR: 10.244.0.0/16
conntrack:
  maxPerCore: null
  tcpEstablishedTimeout: 24h0m0s
ipvs:
  scheduler: ""
  tcpTimeout: 15m0s
mode: iptables
nodePortAddresses: null
"""


@pytest.mark.parametrize("text, nanoseconds", [
    ("0", 0), ("0s", 0), ("30s", 30 * 10 ** 9), ("1m30s", 90 * 10 ** 9), ("15m0s", 900 * 10 ** 9),
    ("24h0m0s", 86400 * 10 ** 9), ("1.5h", 5400 * 10 ** 9), ("300ms", 3 * 10 ** 8), ("-1s", -(10 ** 9)),
    ("15", None), ("15 minutes", None), ("", None), ("s", None), ("1d", None), (None, None), (30, None),
])
def test_parse_duration(text, nanoseconds):
    assert parse_duration(text) == nanoseconds


def test_merge_keeps_everything_else_and_equal_durations():
    current = parse_config(STORED, "cm")
    patch = patch_from_options({"mode": "ipvs", "ipvs_scheduler": "rr", "ipvs_tcp_timeout": "15m",
                                "conntrack_tcp_established_timeout": "24h", "conntrack_max_per_core": 0},
                               {"ipvs": {"strictARP": True}, "metricsBindAddress": "0.0.0.0:10249"})
    merged = merge_config(current, patch)
    assert merged["mode"] == "ipvs"
    assert merged["ipvs"] == {"scheduler": "rr", "tcpTimeout": "15m0s", "strictARP": True}
    assert merged["conntrack"] == {"maxPerCore": 0, "tcpEstablishedTimeout": "24h0m0s"}
    assert merged["clusterCIDR"] == "10.244.0.0/16" and merged["nodePortAddresses"] is None
    assert list(merged)[:4] == ["apiVersion", "kind", "clusterCIDR", "conntrack"], "key order changed"
    assert current["mode"] == "iptables", "merge modified its input"
    assert yaml.safe_load(render_config(merged)) == merged


def test_merging_what_is_stored_is_no_change():
    current = parse_config(STORED, "cm")
    patch = patch_from_options({"mode": "iptables", "ipvs_tcp_timeout": "900s"}, {})
    assert merge_config(current, patch) == current


def test_option_and_merge_must_agree():
    assert patch_from_options({"mode": "ipvs"}, {"mode": "ipvs"}) == {"mode": "ipvs"}
    with pytest.raises(KubeIpvsError, match="disagree"):
        patch_from_options({"mode": "ipvs"}, {"mode": "iptables"})
    with pytest.raises(KubeIpvsError, match="non-mapping"):
        patch_from_options({"ipvs_scheduler": "rr"}, {"ipvs": "rr"})


@pytest.mark.parametrize("config, message", [
    ({"mode": "ipvs2"}, "mode 'ipvs2' is not a kube-proxy mode"),
    ({"mode": "kernelspace"}, "exists only on Windows"),
    ({"mode": "userspace"}, "not a kube-proxy mode"),
    ({"ipvs": {"scheduler": "fast"}}, "ipvs.scheduler 'fast'"),
    ({"ipvs": {"strictARP": "yes"}}, "ipvs.strictARP must be true or false"),
    ({"ipvs": {"excludeCIDRs": ["10.0.0.0/8", "nope"]}}, "'nope' is not a CIDR"),
    ({"ipvs": {"excludeCIDRs": "10.0.0.0/8"}}, "must be a list"),
    ({"ipvs": {"tcpTimeout": "15"}}, "ipvs.tcpTimeout: '15' is not a duration"),
    ({"conntrack": {"tcpCloseWaitTimeout": "-1h"}}, "must not be negative"),
    ({"conntrack": {"maxPerCore": -1}}, "conntrack.maxPerCore: -1"),
    ({"conntrack": {"min": True}}, "conntrack.min: True"),
])
def test_validate_rejects(config, message):
    with pytest.raises(KubeIpvsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_config(config)


@pytest.mark.parametrize("mode", ["", "iptables", "ipvs", "nftables"])
def test_validate_accepts_linux_modes_and_defaults(mode):
    validate_config(merge_config(default_config(), {"mode": mode, "ipvs": {"scheduler": "mh"},
                                                    "conntrack": {"maxPerCore": 0, "min": 131072}}))


@pytest.mark.parametrize("text, message", [
    ("mode: [ipvs\n", "cm/config.conf is not valid YAML"),
    ("- mode\n", "is not a YAML mapping"),
    ("kind: KubeletConfiguration\n", "holds a 'KubeletConfiguration'"),
])
def test_parse_rejects(text, message):
    with pytest.raises(KubeIpvsError, match=message):
        parse_config(text, "cm/config.conf")


def test_parse_empty_is_empty_config():
    assert parse_config("", "cm") == {}
