# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The dummy link kube-proxy puts its VIPs on, and its addresses, over rtnetlink.

Adding a /32 to a link that already holds N addresses costs O(N) in the kernel, so filling
kube-ipvs0 with 10k VIPs is O(N^2): the addresses are read once, and only the difference
(pure/_links.py) is added or removed, hundreds of RTM_NEWADDR/RTM_DELADDR per send().
"""

from __future__ import annotations

import socket
import struct

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    ADDRESS_FAMILY,
    HOST_PREFIX,
    OF_ADDRESS_FAMILY,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import Link

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFLA_IFNAME = 3
IFLA_TXQLEN = 13
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1

IFA_ADDRESS = 1
IFA_LOCAL = 2

IFF_BROADCAST = 0x2

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index


class LinkKernel:
    """Links and addresses through one rtnetlink socket (the same interface is faked in tests)."""

    def __init__(self):
        self.sock = nl.NetlinkSocket(nl.NETLINK_ROUTE, what="rtnetlink request")

    def close(self):
        self.sock.close()

    def get_link(self, name):
        """The Link called ``name``, or None."""
        seq = self.sock.next_seq()
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + nl.attr_str(IFLA_IFNAME, name)
        request = nl.message(RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, seq, body)
        try:
            replies = self.sock.dump(request)
        except nl.NetlinkError as error:
            if error.code == 19:  # ENODEV
                return None
            raise
        for data, start, end in replies:
            _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, start)
            attrs = nl.parse_attrs(data, start + IFINFOMSG.size, end)
            kind = ""
            if IFLA_LINKINFO in attrs:
                offset, length = attrs[IFLA_LINKINFO]
                info = nl.parse_attrs(data, offset, offset + length)
                if IFLA_INFO_KIND in info:
                    kind_at, kind_len = info[IFLA_INFO_KIND]
                    kind = data[kind_at:kind_at + kind_len].split(b"\0", 1)[0].decode()
            return Link(name, index, kind, flags)
        return None

    def _ack(self, msg_type, flags, body, name):
        failures = self.sock.transact([(None, msg_type, flags, body)])
        if failures:
            raise nl.NetlinkError(failures[0][1], what=f"rtnetlink request on link {name}")

    def add_dummy(self, name):
        """Create ``name`` as kube-proxy does: type dummy, left down (the kernel sets BROADCAST,NOARP),
        with a transmit queue length of 0 (kube-proxy's netlink library sends it; the kernel's
        default would be 1000)."""
        linkinfo = nl.attr_nested(IFLA_LINKINFO, nl.attr_str(IFLA_INFO_KIND, "dummy"))
        body = (IFINFOMSG.pack(0, 0, 0, 0, 0) + nl.attr_str(IFLA_IFNAME, name) + nl.attr_u32(IFLA_TXQLEN, 0)
                + linkinfo)
        self._ack(RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body, name)

    def delete_link(self, link):
        self._ack(RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, link.index, 0, 0), link.name)

    def _dump_addresses(self, wanted):
        """(link index, text, family, prefix length) of every address whose link index ``wanted``
        accepts - one dump of all addresses."""
        seq = self.sock.next_seq()
        request = nl.message(RTM_GETADDR, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, IFADDRMSG.pack(0, 0, 0, 0, 0))
        unpack = IFADDRMSG.unpack_from
        for data, start, end in self.sock.dump(request):
            number, prefix, _flags, _scope, index = unpack(data, start)
            family = OF_ADDRESS_FAMILY.get(number)
            if not wanted(index) or family is None:
                continue
            attrs = nl.parse_attrs(data, start + IFADDRMSG.size, end)
            where = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if where is None:
                continue
            offset, length = where
            yield index, socket.inet_ntop(number, data[offset:offset + length]), family, prefix

    def addresses(self, link):
        """{text: (family, prefix length)} of the addresses on ``link``."""
        return {text: (family, prefix)
                for _index, text, family, prefix in self._dump_addresses(lambda index: index == link.index)}

    def addresses_and_others(self, link):
        """From one dump: the addresses of ``link`` as ``addresses`` gives them ({} for None), and
        those of every other link, as sorted text."""
        own, others = {}, set()
        index = link.index if link is not None else None
        for at, text, family, prefix in self._dump_addresses(lambda _index: True):
            if at == index:
                own[text] = (family, prefix)
            else:
                others.add(text)
        return own, sorted(others)

    def change_addresses(self, link, to_add, to_remove):
        """Add and remove host addresses, batched. When the kernel refuses some, the changes it made
        are undone (the added addresses removed, the removed ones added back) and the error names
        the refused ones: a call changes all the addresses or none."""
        requests = []
        for family, text, prefix in to_remove:
            requests.append((("remove", family, text, prefix), RTM_DELADDR, 0,
                             _address_body(link.index, family, text, prefix)))
        create = nl.NLM_F_CREATE | nl.NLM_F_EXCL
        for family, text in to_add:
            requests.append((("add", family, text, HOST_PREFIX[family]), RTM_NEWADDR, create,
                             _address_body(link.index, family, text, HOST_PREFIX[family])))
        failures = self.sock.transact(requests)
        if failures:
            shown = ", ".join(f"{tag[0]} {tag[2]}: errno {code}" for tag, code in failures[:10])
            refused = {tag for tag, _code in failures}
            undo = []
            for tag, _type, _flags, _body in requests:
                if tag in refused:
                    continue
                verb, family, text, prefix = tag
                if verb == "add":
                    undo.append((tag, RTM_DELADDR, 0, _address_body(link.index, family, text, prefix)))
                else:
                    undo.append((tag, RTM_NEWADDR, create, _address_body(link.index, family, text, prefix)))
            left = self.sock.transact(undo)
            outcome = ("the other changes were undone" if not left else
                       f"undoing the other changes failed for {len(left)} of them, the link is half-changed")
            raise KubeIpvsError(f"the kernel refused {len(failures)} of {len(requests)} address changes "
                                f"on {link.name}: {shown}; {outcome}")


def _address_body(index, family, text, prefix):
    number = ADDRESS_FAMILY[family]
    packed = socket.inet_pton(number, text)
    # No flags, as kube-proxy adds them: the kernel runs no duplicate address detection on a NOARP
    # link, so an IPv6 VIP is usable at once (no IFA_F_NODAD needed, which `ip addr` would show).
    header = IFADDRMSG.pack(number, prefix, 0, 0, index)
    return header + nl.attr(IFA_LOCAL, packed) + nl.attr(IFA_ADDRESS, packed)
