# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IP families: the collection's one spelling, and each interface's own word for it.

Inside the code a family is ``"ipv4"`` or ``"ipv6"``, always. The other words exist only where
something outside speaks them - a tool's syntax, a kernel interface, an API field, a module
option that follows a tool - and are translated here, at that edge.
"""

from __future__ import annotations

import socket

IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)

# ipaddress objects' .version
VERSION = {IPV4: 4, IPV6: 6}
# AF_INET / AF_INET6: netlink messages, the socket module's address conversions
ADDRESS_FAMILY = {IPV4: socket.AF_INET, IPV6: socket.AF_INET6}
OF_ADDRESS_FAMILY = {number: family for family, number in ADDRESS_FAMILY.items()}
# ipset's and ipvsadm's word, and the options of the modules that follow them (ipset, ipvs_service)
INET = {IPV4: "inet", IPV6: "inet6"}
OF_INET = {word: family for family, word in INET.items()}
# nftables table families
NFT = {IPV4: "ip", IPV6: "ip6"}
# Kubernetes EndpointSlice addressType
KUBERNETES = {IPV4: "IPv4", IPV6: "IPv6"}
HOST_PREFIX = {IPV4: 32, IPV6: 128}


def family_of(ip):
    """The family of an ipaddress address or network."""
    return IPV6 if ip.version == 6 else IPV4
