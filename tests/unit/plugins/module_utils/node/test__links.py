# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""LinkKernel: rtnetlink address message bytes and the parsing of an address dump."""

from __future__ import annotations

import socket
import sys

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _links
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils.node._links import LinkKernel
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import ADDRESS_FAMILY, IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import (
    Link,
)

V4, V6 = IPV4, IPV6


@pytest.mark.skipif(sys.byteorder != "little", reason="little-endian fixture")
def test_address_message_bytes():
    body = _links._address_body(7, V4, "10.96.0.1", 32)
    assert body == bytes.fromhex("02 20 00 00 07000000 0800 0200 0a600001 0800 0100 0a600001".replace(" ", ""))
    body6 = _links._address_body(7, V6, "fd00::1", 128)
    assert body6[:8] == bytes.fromhex("0a 80 00 00 07000000".replace(" ", ""))  # no flags, as kube-proxy's


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
    packed = socket.inet_pton(ADDRESS_FAMILY[family], text)
    return _links.IFADDRMSG.pack(ADDRESS_FAMILY[family], prefix, 0, 0, index) + nl.attr(_links.IFA_ADDRESS, packed) + (
        nl.attr(_links.IFA_LOCAL, packed) if family == V4 else b"")


def test_addresses_parses_only_the_links_own():
    links = LinkKernel.__new__(LinkKernel)
    links.sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
    links.sock.sock = ScriptedRoute([addr_row(V4, 8, 1, "127.0.0.1"), addr_row(V4, 32, 5, "10.96.0.1"),
                                     addr_row(V6, 128, 5, "fd00::1"), addr_row(V4, 24, 2, "10.0.2.15")])
    links.sock.seq = 0
    assert links.addresses(Link("kube-ipvs0", 5, "dummy", 0x82)) == {"10.96.0.1": (V4, 32), "fd00::1": (V6, 128)}


class ScriptedTransact:
    """``transact`` answering the first batch with ``refused`` (tags whose message fails), then none."""

    def __init__(self, refused):
        self.refused = refused
        self.batches = []

    def transact(self, requests):
        requests = list(requests)
        self.batches.append([(tag, msg_type) for tag, msg_type, _flags, _body in requests])
        if len(self.batches) == 1:
            return [(tag, 22) for tag, _type, _flags, _body in requests if tag[2] in self.refused]
        return []


def test_a_refused_address_change_undoes_the_ones_the_kernel_made():
    links = LinkKernel.__new__(LinkKernel)
    links.sock = ScriptedTransact(refused={"10.96.0.3"})
    link = Link("kube-ipvs0", 5, "dummy", 0x82)
    refused = r"refused 1 of 3 .*add 10\.96\.0\.3: errno 22; the other changes were undone"
    with pytest.raises(KubeIpvsError, match=refused):
        links.change_addresses(link, [(V4, "10.96.0.2"), (V4, "10.96.0.3")], [(V4, "10.96.0.1", 32)])
    assert links.sock.batches[1] == [(("remove", V4, "10.96.0.1", 32), _links.RTM_NEWADDR),
                                     (("add", V4, "10.96.0.2", 32), _links.RTM_DELADDR)]


def test_one_dump_gives_the_links_own_addresses_and_every_other_links():
    links = LinkKernel.__new__(LinkKernel)
    links.sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
    rows = [addr_row(V4, 8, 1, "127.0.0.1"), addr_row(V4, 32, 5, "10.96.0.1"), addr_row(V6, 64, 2, "fd00::2"),
            addr_row(V4, 24, 2, "10.0.2.15")]
    links.sock.sock = ScriptedRoute(rows)
    links.sock.seq = 0
    own, others = links.addresses_and_others(Link("kube-ipvs0", 5, "dummy", 0x82))
    assert own == {"10.96.0.1": (V4, 32)}
    assert others == ["10.0.2.15", "127.0.0.1", "fd00::2"]
    assert links.sock.sock.queue == []  # one request, its whole answer read
    links.sock.sock = ScriptedRoute(rows)
    assert links.addresses_and_others(None) == ({}, ["10.0.2.15", "10.96.0.1", "127.0.0.1", "fd00::2"])
