# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Dummy link addresses: normalisation, the add/remove difference, rtnetlink bytes and parsing."""

from __future__ import annotations

import socket
import sys

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils import _links
from ansible_collections.kubeipvs.node.plugins.module_utils import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils._links import (
    Link,
    LinkKernel,
    canonical_host,
    normalize_addresses,
    plan_addresses,
    validate_link_name,
)

V4, V6 = socket.AF_INET, socket.AF_INET6


@pytest.mark.parametrize(("value", "expected"), [
    ("10.96.0.1", (V4, "10.96.0.1")),
    ("10.96.0.1/32", (V4, "10.96.0.1")),
    (" FD00:10:96:0::1/128", (V6, "fd00:10:96::1")),
])
def test_canonical_host(value, expected):
    assert canonical_host(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("10.96.0.0/24", "only host addresses (/32)"),
    ("fd00::1/64", "only host addresses (/128)"),
    ("10.96.0.256", "not an IPv4 or IPv6 address"),
    ("kube-ipvs0", "not an IPv4 or IPv6 address"),
])
def test_bad_addresses(value, message):
    with pytest.raises(KubeIpvsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_host(value)


def test_normalize_addresses_collapses_duplicates():
    assert normalize_addresses(["10.96.0.1", "10.96.0.1/32", "fd00::1"]) == {"10.96.0.1": V4, "fd00::1": V6}


PLAN_CASES = [
    pytest.param({"10.96.0.1": V4, "10.96.0.2": V4}, {}, False, [(V4, "10.96.0.1"), (V4, "10.96.0.2")], [],
                 id="empty-link"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32)}, False, [], [], id="present-never-re-added"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 24)}, True, [], [], id="other-prefix-counts-as-present"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32), "10.96.0.9": (V4, 32), "fd00::9": (V6, 128)}, False,
                 [], [], id="not-exclusive-keeps-others"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32), "10.96.0.9": (V4, 32), "fd00::9": (V6, 128)}, True,
                 [], [(V4, "10.96.0.9", 32), (V6, "fd00::9", 128)], id="exclusive-removes-others"),
]


@pytest.mark.parametrize(("wanted", "current", "exclusive", "to_add", "to_remove"), PLAN_CASES)
def test_plan_addresses(wanted, current, exclusive, to_add, to_remove):
    assert plan_addresses(wanted, current, exclusive) == (to_add, to_remove)


def test_plan_at_scale_adds_only_the_difference():
    current = {f"10.96.{i // 256}.{i % 256}": (V4, 32) for i in range(10000)}
    wanted = {f"10.96.{i // 256}.{i % 256}": V4 for i in range(10005)}
    to_add, to_remove = plan_addresses(wanted, current, True)
    expected = ["10.96.39.16", "10.96.39.17", "10.96.39.18", "10.96.39.19", "10.96.39.20"]
    assert [text for _f, text in to_add] == expected
    assert to_remove == []


@pytest.mark.parametrize("name", ["", "a" * 16, "bad/name", "with space"])
def test_bad_link_names(name):
    with pytest.raises(KubeIpvsError):
        validate_link_name(name)


@pytest.mark.skipif(sys.byteorder != "little", reason="little-endian fixture")
def test_address_message_bytes():
    body = _links._address_body(7, V4, "10.96.0.1", 32)
    assert body == bytes.fromhex("02 20 00 00 07000000 0800 0200 0a600001 0800 0100 0a600001".replace(" ", ""))
    body6 = _links._address_body(7, V6, "fd00::1", 128)
    assert body6[:8] == bytes.fromhex("0a 80 02 00 07000000".replace(" ", ""))  # IFA_F_NODAD for IPv6


class ScriptedRoute:
    """Answers an RTM_GETADDR dump with hand-built RTM_NEWADDR messages, then DONE."""

    def __init__(self, rows):
        self.rows = rows
        self.queue = []

    def send(self, data):
        (_t, _f, seq, _s, _e), = nl.iter_messages(data)
        for row in self.rows:
            self.queue.append(nl.message(_links.RTM_NEWADDR, nl.NLM_F_MULTI, seq, row))
        self.queue.append(nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, b"\0\0\0\0"))
        return len(data)

    def recv(self, size):
        return self.queue.pop(0)


def addr_row(family, prefix, index, text):
    packed = socket.inet_pton(family, text)
    return _links.IFADDRMSG.pack(family, prefix, 0, 0, index) + nl.attr(_links.IFA_ADDRESS, packed) + (
        nl.attr(_links.IFA_LOCAL, packed) if family == V4 else b"")


def test_addresses_parses_only_the_links_own():
    links = LinkKernel.__new__(LinkKernel)
    links.sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
    links.sock.sock = ScriptedRoute([addr_row(V4, 8, 1, "127.0.0.1"), addr_row(V4, 32, 5, "10.96.0.1"),
                                     addr_row(V6, 128, 5, "fd00::1"), addr_row(V4, 24, 2, "10.0.2.15")])
    links.sock.seq = 0
    assert links.addresses(Link("kube-ipvs0", 5, "dummy", 0x82)) == {"10.96.0.1": (V4, 32), "fd00::1": (V6, 128)}
