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
    settings_of,
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
    ("0.1s", 10 ** 8), ("1." + "0" * 400 + "s", 10 ** 9), ("1" * 400 + "ns", 10 ** 30), ("0" * 5000 + "1s", 10 ** 9),
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
    ({"clusterCIDR": "not-a-cidr"}, "clusterCIDR: 'not-a-cidr' is not a CIDR"),
    ({"clusterCIDR": "10.244.0.0/16,10.245.0.0/16"}, "one IPv4 and one IPv6 CIDR"),
    ({"clusterCIDR": "10.244.0.0/16,fd00::/64,10.1.0.0/16"}, "one IPv4 and one IPv6 CIDR"),
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


# The schema of the apiVersion: values of the wrong type are refused before anything is written.

@pytest.mark.parametrize("config, message", [
    ({"ipvs": "not-a-map"}, "ipvs must be a mapping"),
    ({"conntrack": 5}, "conntrack must be a mapping"),
    ({"kind": "Pod"}, "kind 'Pod' is not KubeProxyConfiguration"),
    ({"apiVersion": "kubeproxy.config.k8s.io/v9"}, "apiVersion 'kubeproxy.config.k8s.io/v9' is not one"),
    ({"apiVersion": ["x"]}, "apiVersion"),
    ({"mode": 5}, "mode must be a string"),
    ({"mode": "ipvs\n"}, "holds a control character"),
    ({"bindAddress": "0.0.0.0\x00"}, "holds a control character"),
    ({"clusterCIDR": {"a": 1}}, "clusterCIDR must be a string"),
    ({"nodePortAddresses": "primary"}, "nodePortAddresses must be a list of strings"),
    ({"nodePortAddresses": [1]}, r"nodePortAddresses\[0\] must be a string"),
    ({"iptables": {"masqueradeBit": 32}}, "iptables.masqueradeBit: 32 must be a whole number 0 to 31"),
    ({"iptables": {"masqueradeAll": "yes"}}, "iptables.masqueradeAll must be true or false"),
    ({"oomScoreAdj": -1001}, "oomScoreAdj: -1001"),
    ({"conntrack": {"maxPerCore": 2 ** 31}}, "conntrack.maxPerCore"),
    ({"conntrack": {"min": 1.5}}, "conntrack.min: 1.5"),
    ({"conntrack": {"udpTimeout": 30}}, "conntrack.udpTimeout: 30 is not a duration"),
    ({"configSyncPeriod": "9999999999h"}, "longer than a duration can be"),
    ({"configSyncPeriod": "1" * 400 + "s"}, "longer than a duration can be"),
    ({"configSyncPeriod": "9" * 5000 + "h"}, "longer than a duration can be"),
    ({"ipvs": {"syncPeriod": "." + "1" * 400 + "h"}}, None),
    ({"clientConnection": {"qps": float("nan")}}, "clientConnection.qps must be a number"),
    ({"clientConnection": {"qps": float("inf")}}, "clientConnection.qps must be a number"),
    ({"clientConnection": {"burst": "5"}}, "clientConnection.burst"),
    ({"featureGates": {"A": "true"}}, "featureGates.A must be true or false"),
    ({"featureGates": {1: True}}, "featureGates: key 1"),
    ({"logging": {"verbosity": -1}}, "logging.verbosity"),
    ({"logging": {"flushFrequency": "5 seconds"}}, "logging.flushFrequency"),
    ({"logging": {"vmodule": [{"filePattern": 1}]}}, r"logging.vmodule\[0\].filePattern must be a string"),
    ({"logging": {"options": {"json": {"infoBufferSize": "lots"}}}}, "not a quantity"),
    ({"syncPeriod": "30s"}, "syncPeriod is not a field of KubeProxyConfiguration"),
    ({"colour": "red"}, "colour is not a field"),
    ({5: "x"}, "5 is not a field"),
])
def test_the_schema_of_the_api_version_refuses_wrong_types(config, message):
    if message is None:
        validate_config(config, config)
        return
    with pytest.raises(KubeIpvsError, match=message):
        validate_config(config, config)


def test_unknown_nested_fields_are_refused_when_asked_for_and_kept_when_stored():
    stored = merge_config(default_config(), {"ipvs": {"someFutureField": 1}})
    validate_config(stored, {"mode": "ipvs"})  # stored by someone else: left as it is
    with pytest.raises(KubeIpvsError, match=r"ipvs\.stricARP is not a field"):
        validate_config(merge_config(stored, {"ipvs": {"stricARP": True}}), {"ipvs": {"stricARP": True}})


def test_every_field_of_the_defaults_and_of_a_full_document_passes():
    config = merge_config(default_config("10.244.0.0/16"), {
        "featureGates": {"A": True}, "bindAddressHardFail": False, "detectLocalMode": "ClusterCIDR",
        "detectLocal": {"bridgeInterface": "", "interfaceNamePrefix": ""}, "windowsRunAsService": False,
        "logging": {"format": "text", "flushFrequency": 5000000000, "verbosity": 2,
                    "vmodule": [{"filePattern": "proxier*", "verbosity": 4}],
                    "options": {"text": {"infoBufferSize": "0"}, "json": {"infoBufferSize": "64Ki",
                                                                          "splitStream": True}}},
        "winkernel": {"networkName": "", "sourceVip": "", "enableDSR": False, "rootHnsEndpointName": "",
                      "forwardHealthCheckVip": False},
        "nftables": {"masqueradeBit": 14, "masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "1s"},
        "conntrack": {"tcpBeLiberal": True, "tcpEstablishedTimeout": "24h0m0s"}, "oomScoreAdj": -999,
        "clientConnection": {"qps": 5.5, "burst": 10}})
    validate_config(config, config)


def test_a_stored_document_nested_too_deeply_is_a_clean_error():
    with pytest.raises(KubeIpvsError, match=r"not valid YAML|nested too deeply"):
        parse_config("a: " + "[" * 20000 + "]" * 20000, "cm")


def test_settings_of_a_kubeadm_config_take_kube_proxy_s_defaults():
    settings = settings_of(default_config("10.244.0.0/16"))
    assert settings == {"mode": "iptables", "ipvs_scheduler": "rr", "ipvs_exclude_cidrs": [],
                        "cluster_cidr": "10.244.0.0/16",
                        "masquerade_bit": {"iptables": 14, "ipvs": 14, "nftables": 14},
                        "masquerade_all": {"iptables": False, "ipvs": False, "nftables": False},
                        "node_port_addresses": [], "localhost_node_ports": True, "feature_gates": {}}


def test_settings_read_each_mode_s_own_section_and_keep_a_bit_of_zero():
    config = {"mode": "nftables", "ipvs": {"scheduler": "wlc", "excludeCIDRs": ["192.0.2.50/32"]},
              "iptables": {"masqueradeBit": 0, "masqueradeAll": True, "localhostNodePorts": False},
              "nftables": {"masqueradeBit": 15}, "nodePortAddresses": ["primary", "192.0.2.0/24"],
              "featureGates": {"AllowServiceExternalIPs": False, "SomeGate": True, "NotABool": "yes"}}
    settings = settings_of(config)
    assert settings["mode"] == "nftables" and settings["ipvs_scheduler"] == "wlc"
    assert settings["ipvs_exclude_cidrs"] == ["192.0.2.50/32"]
    assert settings["masquerade_bit"] == {"iptables": 0, "ipvs": 0, "nftables": 15}
    assert settings["masquerade_all"] == {"iptables": True, "ipvs": True, "nftables": False}
    assert settings["node_port_addresses"] == ["primary", "192.0.2.0/24"]
    assert settings["localhost_node_ports"] is False
    assert settings["feature_gates"] == {"AllowServiceExternalIPs": False, "SomeGate": True}


@pytest.mark.parametrize("config", [None, "mode: ipvs", {"mode": 3, "iptables": {"masqueradeBit": True},
                                                         "ipvs": "x", "nodePortAddresses": "10.0.0.0/8"}])
def test_settings_of_something_else_are_the_defaults(config):
    settings = settings_of(config)
    assert settings["mode"] == "iptables" and settings["masquerade_bit"]["ipvs"] == 14
    assert settings["ipvs_exclude_cidrs"] == [] and settings["node_port_addresses"] == []
    assert settings["localhost_node_ports"] is True
    assert settings["feature_gates"] == {}


@pytest.mark.parametrize("cidr", ["", "10.244.0.0/16", "10.244.0.0/16,fd00:10:244::/56", "fd00:10:244::/56"])
def test_validate_accepts_kube_proxy_s_cluster_cidrs(cidr):
    validate_config(merge_config(default_config(), {"clusterCIDR": cidr}))
