# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The dummy link kube-proxy puts its VIPs on, as plain data: the link, its host addresses and the
difference to send. Speaking rtnetlink is node/_links.py's job.
"""

from __future__ import annotations

import ipaddress
import socket

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import ADDRESS_FAMILY, FAMILIES, HOST_PREFIX
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import LINK_NAME, check_text

IFF_UP = 0x1


IFF_NOARP = 0x80


class Link:
    __slots__ = ("flags", "index", "kind", "name")

    def __init__(self, name, index, kind, flags):
        self.name = name
        self.index = index
        self.kind = kind
        self.flags = flags

    def as_dict(self):
        return {"name": self.name, "index": self.index, "kind": self.kind, "up": bool(self.flags & IFF_UP),
                "noarp": bool(self.flags & IFF_NOARP)}


def canonical_host(value):
    """(family, canonical text) of ``10.96.0.1``, ``10.96.0.1/32``, ``fd00::1/128``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise KubeIpvsError(f"address {value!r} is not an IPv4 or IPv6 address"[:300])
    text = check_text(str(value), "address").strip(" ")
    prefix = None
    if "/" in text:
        text, _slash, prefix = text.partition("/")
    for family in FAMILIES:
        try:
            packed = socket.inet_pton(ADDRESS_FAMILY[family], text)
        except (OSError, ValueError):
            continue
        if prefix is not None and prefix != str(HOST_PREFIX[family]):
            raise KubeIpvsError(f"address {value!r}: only host addresses (/{HOST_PREFIX[family]}) go on the dummy link")
        return family, socket.inet_ntop(ADDRESS_FAMILY[family], packed)
    raise KubeIpvsError(f"address {value!r} is not an IPv4 or IPv6 address")


def normalize_addresses(values):
    """{canonical text: family} of the wanted host addresses (duplicates collapse)."""
    if not isinstance(values, list):
        raise KubeIpvsError("addresses must be a list")
    wanted = {}
    for value in values:
        family, text = canonical_host(value)
        wanted[text] = family
    return wanted


def plan_addresses(wanted, current, exclusive):
    """(to add, to remove): ``wanted`` {text: family}; ``current`` {text: (family, prefix)}.

    An address already on the link is never added again, whatever its prefix length.
    """
    to_add = [(wanted[text], text) for text in wanted if text not in current]
    to_remove = []
    if exclusive:
        to_remove = [(family, text, prefix) for text, (family, prefix) in current.items() if text not in wanted]
    return sorted(to_add, key=_address_order), sorted(to_remove, key=_address_order)


def _address_order(item):
    return (item[0], socket.inet_pton(ADDRESS_FAMILY[item[0]], item[1]))


def validate_link_name(name):
    """The kernel's interface name rules (1-15 bytes, no '/', ':' or white space), and no control
    character: the name goes into a netlink message as a NUL-terminated string."""
    if not LINK_NAME.matches(name):
        raise KubeIpvsError(f"link name {name!r} is not a valid interface name (1-15 bytes, no '/', ':', spaces or "
                            "control characters)")


def node_port_addresses(local_addresses, node_port_cidrs=()):
    """The addresses kube-proxy's IPVS mode opens NodePorts on, from the node's own addresses (every
    link's but the dummy link's): with no ``node_port_cidrs`` (or a zero-length one, kube-proxy's
    default) every address but loopback and IPv6 link-local ones; else the addresses inside them
    but loopback ones. Sorted, IPv4 first."""
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in node_port_cidrs]
    match_all = not networks or any(network.prefixlen == 0 for network in networks)
    found = set()
    for text in local_addresses:
        address = ipaddress.ip_address(text)
        if address.is_loopback:
            continue
        if match_all:
            if address.version == 6 and address.is_link_local:
                continue
        elif not any(address in network for network in networks):
            continue
        found.add(address)
    return [str(address) for address in sorted(found, key=lambda a: (a.version, a))]
