# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The catalogue's version facts: reading a kube-proxy version from an image or a server, and the
release the renderers reproduce for it; nodePortAddresses, localhost NodePorts and route_localnet."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_catalogue import (
    RENDERED_VERSIONS,
    addresses_in,
    check_version,
    gate_settings,
    image_tag,
    iptables_sysctls,
    localhost_node_ports,
    node_port_cidrs,
    node_port_networks,
    parse_version,
    rendered_version,
)


@pytest.mark.parametrize("text, expected", [
    ("v1.34.4", (1, 34, 4)), ("1.34", (1, 34, 0)), (" v1.37.2 ", (1, 37, 2)),
    ("v1.34.4-eks-1-34-20260101", (1, 34, 4)), ("v1.36.0+k3s1", (1, 36, 0)),
    ("", None), (None, None), ("latest", None), ("v1", None), ("1.34.4.5", None), ("v1.x", None),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("image, expected", [
    ("registry.k8s.io/kube-proxy:v1.34.4", (1, 34, 4)),
    ("registry.example:5000/kube-proxy:v1.35.4@sha256:" + "0" * 64, (1, 35, 4)),
    ("registry.example:5000/kube-proxy", None),  # the colon is the registry's port
    ("registry.k8s.io/kube-proxy@sha256:" + "0" * 64, None),
    ("registry.k8s.io/kube-proxy:latest", None),
    ("kube-proxy:v1.36.3-custom", (1, 36, 3)),
    ("", None), (None, None),
])
def test_image_version(image, expected):
    assert parse_version(image_tag(image)) == expected


def test_rendered_version_is_the_release_itself_or_the_nearest_proven_one():
    for release in RENDERED_VERSIONS:
        assert rendered_version((*release, 9)) == release
    assert rendered_version((1, 31, 2)) == RENDERED_VERSIONS[0]
    assert rendered_version((1, 40, 0)) == RENDERED_VERSIONS[-1]
    assert rendered_version((2, 0, 0)) == RENDERED_VERSIONS[-1]


def test_check_version():
    assert check_version([1, 35]) == (1, 35)
    for bad in ((1, 33), (1, 35, 1), "1.35", None, ("a", "b")):
        with pytest.raises(ValueError, match="not a kube-proxy release rendered here"):
            check_version(bad)


NODE_IPS = ["192.0.2.10", "192.0.2.11", "2001:db8::10"]


@pytest.mark.parametrize("configured, version, expected", [
    ([], (1, 37), []),
    (None, (1, 34), []),
    (["primary"], (1, 34), ["192.0.2.10/32", "2001:db8::10/128"]),
    (["primary"], (1, 37), ["192.0.2.10/32", "2001:db8::10/128"]),
    (["10.0.0.0/8", "fd00::/64"], (1, 35), ["10.0.0.0/8", "fd00::/64"]),
    (["localhost", "10.0.0.0/8"], (1, 37), ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]),
    (["primary", "localhost"], (1, 37), ["192.0.2.10/32", "2001:db8::10/128", "127.0.0.0/8", "::1/128"]),
    (["all"], (1, 37), ["0.0.0.0/0", "::/0"]),
])
def test_node_port_cidrs_expands_the_keywords_of_the_release(configured, version, expected):
    assert node_port_cidrs(configured, NODE_IPS, version) == expected


def test_primary_skips_a_loopback_node_ip():
    assert node_port_cidrs(["primary"], ["127.0.0.1", "2001:db8::10"], (1, 36)) == ["2001:db8::10/128"]


@pytest.mark.parametrize("configured, version", [
    (["primary", "10.0.0.0/8"], (1, 36)),  # before v1.37, only as the only entry
    (["localhost"], (1, 36)),
    (["all"], (1, 34)),
    (["10.0.0.0/33"], (1, 37)),
    (["eth0"], (1, 37)),
])
def test_node_port_cidrs_refuses_what_the_release_does_not_know(configured, version):
    with pytest.raises(ValueError, match=r"node_port_cidrs\[\d\]: .* is not a CIDR nor a keyword kube-proxy 1\.3\d"):
        node_port_cidrs(configured, NODE_IPS, version)


def test_node_port_networks_is_none_where_every_address_takes_node_ports():
    assert node_port_networks([], "ipv4") is None
    assert node_port_networks(["fd00::/64"], "ipv4") is None  # no CIDR of the family
    assert node_port_networks(["10.0.0.0/8", "0.0.0.0/0"], "ipv4") is None
    assert [str(n) for n in node_port_networks(["10.0.0.0/8", "fd00::/64"], "ipv6")] == ["fd00::/64"]


@pytest.mark.parametrize("enabled, cidrs, expected", [
    (None, [], True),
    (True, [], True),
    (False, [], False),
    (True, ["fd00::/64"], True),          # no IPv4 entry: every IPv4 address
    (True, ["10.0.0.0/8"], False),
    (True, ["10.0.0.0/8", "127.0.0.0/8"], True),
    (True, ["127.0.0.1/32"], True),       # a loopback CIDR, though 127.0.0.0 is outside it
    (True, ["0.0.0.0/0"], True),
    (True, ["192.0.2.10/32"], False),     # primary
])
def test_localhost_node_ports_as_kube_proxy_decides_them(enabled, cidrs, expected):
    assert localhost_node_ports(enabled, cidrs) is expected


def test_route_localnet_is_set_by_the_ipv4_proxier_for_localhost_node_ports():
    assert iptables_sysctls(["ipv4", "ipv6"], True) == {"net.ipv4.conf.all.route_localnet": 1}
    assert iptables_sysctls(["ipv6"], True) == {}
    assert iptables_sysctls(["ipv4"], False) == {}


def test_addresses_in_the_networks_once_each_in_their_order():
    networks = node_port_networks(["192.0.2.0/24", "127.0.0.0/8"], "ipv4")
    assert addresses_in(networks, ["198.51.100.1", "192.0.2.12", "2001:db8::1", "127.0.0.1", "192.0.2.12",
                                   "not an address"]) == ["192.0.2.12", "127.0.0.1"]


@pytest.mark.parametrize("gates, version, mode, expected", [
    ({}, (1, 37), "nftables", {"external_ips": True, "node_hints": True}),
    # AllowServiceExternalIPs from v1.36; before, kube-proxy has no such gate (and would refuse it)
    ({"AllowServiceExternalIPs": False}, (1, 36), "iptables", {"external_ips": False, "node_hints": True}),
    ({"AllowServiceExternalIPs": False}, (1, 35), "iptables", {"external_ips": True, "node_hints": True}),
    # PreferSameTrafficDistribution may be set in v1.34 alone; locked on after
    ({"PreferSameTrafficDistribution": False}, (1, 34), "ipvs", {"external_ips": True, "node_hints": False}),
    ({"PreferSameTrafficDistribution": False}, (1, 35), "ipvs", {"external_ips": True, "node_hints": True}),
    # gates that change nothing kube-proxy programs, and the refused ones in other modes
    ({"SomeGate": False, "KubeProxyNFTablesLocalhostNodePorts": True}, (1, 37), "iptables",
     {"external_ips": True, "node_hints": True}),
    ({"KubeProxyIPVS": False}, (1, 37), "nftables", {"external_ips": True, "node_hints": True}),
    ({"KubeProxyNFTablesLocalhostNodePorts": True}, (1, 36), "nftables", {"external_ips": True, "node_hints": True}),
])
def test_gate_settings_are_what_each_release_makes_of_the_gates(gates, version, mode, expected):
    assert gate_settings(gates, version, mode) == expected


@pytest.mark.parametrize("gates, mode, what", [
    ({"KubeProxyNFTablesLocalhostNodePorts": True}, "nftables", "localhost NodePorts"),
    ({"KubeProxyIPVS": False}, "ipvs", "refuse IPVS mode"),
])
def test_gate_settings_refuse_a_gate_that_rules_the_mode_out(gates, mode, what):
    with pytest.raises(ValueError, match=f"feature_gates: {next(iter(gates))}=.* on kube-proxy 1.37 .*{what}"):
        gate_settings(gates, (1, 37), mode)
