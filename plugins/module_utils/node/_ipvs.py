# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS on the node, the kernel adapter: one-pass table read, batched changes, global timeouts.

The generic netlink messages are packed by hand (attribute numbers from
include/uapi/linux/ip_vs.h, checked against ipvsadm on Debian's 6.1 kernel). Reading the whole
table costs one GET_SERVICE dump plus one read of /proc/net/ip_vs for the real servers, whose
lines are decoded only for services whose real servers differ from the expected ones; changes go
out hundreds per send(), and every error the kernel reports names the change that caused it.
Input validation is pure/_ipvs_input.py's, planning pure/_ipvs_plan.py's, and one run of both
against this adapter node/_ipvs_reconcile.py's.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    ADDRESS_FAMILY,
    IPV4,
    IPV6,
    OF_ADDRESS_FAMILY,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_DEST,
    ADD_SERVICE,
    DEL_DEST,
    DEL_SERVICE,
    FWD_LOCAL,
    FWD_MASQ,
    FWD_ROUTE,
    FWD_TUNNEL,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    SET_DEST,
    SET_SERVICE,
    Dest,
    Service,
    change_line,
)

IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_FLUSH = 17

IPVS_CMD_ATTR_SERVICE = 1
IPVS_CMD_ATTR_DEST = 2
IPVS_CMD_ATTR_TIMEOUT_TCP = 4
IPVS_CMD_ATTR_TIMEOUT_TCP_FIN = 5
IPVS_CMD_ATTR_TIMEOUT_UDP = 6

IPVS_SVC_ATTR_AF = 1
IPVS_SVC_ATTR_PROTOCOL = 2
IPVS_SVC_ATTR_ADDR = 3
IPVS_SVC_ATTR_PORT = 4
IPVS_SVC_ATTR_FWMARK = 5
IPVS_SVC_ATTR_SCHED_NAME = 6
IPVS_SVC_ATTR_FLAGS = 7
IPVS_SVC_ATTR_TIMEOUT = 8
IPVS_SVC_ATTR_NETMASK = 9

IPVS_DEST_ATTR_ADDR = 1
IPVS_DEST_ATTR_PORT = 2
IPVS_DEST_ATTR_FWD_METHOD = 3
IPVS_DEST_ATTR_WEIGHT = 4
IPVS_DEST_ATTR_U_THRESH = 5
IPVS_DEST_ATTR_L_THRESH = 6
IPVS_DEST_ATTR_ACTIVE_CONNS = 7
IPVS_DEST_ATTR_INACT_CONNS = 8
IPVS_DEST_ATTR_ADDR_FAMILY = 11

TIMEOUT_ATTRS = {"tcp": IPVS_CMD_ATTR_TIMEOUT_TCP, "tcp_fin": IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
                 "udp": IPVS_CMD_ATTR_TIMEOUT_UDP}

ADDRESS_BYTES = {IPV4: 4, IPV6: 16}

ACK_FLAGS = nl.NLM_F_REQUEST | nl.NLM_F_ACK
DUMP_FLAGS = nl.NLM_F_REQUEST | nl.NLM_F_DUMP

_FLAGS = struct.Struct("=II")
_U32 = nl.U32
_BE32 = struct.Struct("!I")
_GENL = {command: nl.GENLMSGHDR.pack(command, IPVS_GENL_VERSION, 0) for command in range(1, 18)}
# One whole nested dest attribute in a single pack: ADDR(16 bytes) PORT(big-endian, hence htons)
# FWD_METHOD WEIGHT U_THRESH L_THRESH ADDR_FAMILY.
_DEST_FULL = struct.Struct("=HH HH16s HHH2x HHI HHI HHI HHI HHH2x")
_DEST_FULL_SIZE = _DEST_FULL.size


def _dest_full_pack(family, address_bytes, port, forwarding, weight, u_threshold, l_threshold):
    return _DEST_FULL.pack(_DEST_FULL_SIZE, IPVS_CMD_ATTR_DEST | nl.NLA_F_NESTED,
                           20, IPVS_DEST_ATTR_ADDR, address_bytes, 6, IPVS_DEST_ATTR_PORT, socket.htons(port),
                           8, IPVS_DEST_ATTR_FWD_METHOD, forwarding, 8, IPVS_DEST_ATTR_WEIGHT, weight,
                           8, IPVS_DEST_ATTR_U_THRESH, u_threshold, 8, IPVS_DEST_ATTR_L_THRESH, l_threshold,
                           6, IPVS_DEST_ATTR_ADDR_FAMILY, ADDRESS_FAMILY[family])


def packed_address(family, address):
    """The 16-byte union nf_inet_addr the kernel uses for both families."""
    return socket.inet_pton(ADDRESS_FAMILY[family], address).ljust(16, b"\0")


def service_id_attr(service):
    """The nested attribute that names a service (what every dest request carries)."""
    if service.fwmark:
        body = (nl.attr_u16(IPVS_SVC_ATTR_AF, ADDRESS_FAMILY[service.family])
                + nl.attr_u32(IPVS_SVC_ATTR_FWMARK, service.fwmark))
    else:
        body = (nl.attr_u16(IPVS_SVC_ATTR_AF, ADDRESS_FAMILY[service.family])
                + nl.attr_u16(IPVS_SVC_ATTR_PROTOCOL, service.protocol)
                + nl.attr(IPVS_SVC_ATTR_ADDR, packed_address(service.family, service.address))
                + nl.attr_be16(IPVS_SVC_ATTR_PORT, service.port))
    return body


def encode_netmask(family, netmask):
    # IPv4: a __be32 mask; IPv6: the prefix length as a plain u32 (what ipvsadm sends).
    return _BE32.pack(netmask) if family == IPV4 else _U32.pack(netmask)


def service_full_attr(service):
    """The nested service attribute NEW_SERVICE/SET_SERVICE need: identity + every setting.

    FLAGS carries mask 0xffffffff so the sent flags replace the kernel's (it adds HASHED itself).
    """
    body = (service_id_attr(service)
            + nl.attr_str(IPVS_SVC_ATTR_SCHED_NAME, service.scheduler)
            + nl.attr(IPVS_SVC_ATTR_FLAGS, _FLAGS.pack(service.flags, 0xFFFFFFFF))
            + nl.attr_u32(IPVS_SVC_ATTR_TIMEOUT, service.timeout if service.persistent else 0)
            + nl.attr(IPVS_SVC_ATTR_NETMASK, encode_netmask(service.family, service.netmask)))
    return nl.attr_nested(IPVS_CMD_ATTR_SERVICE, body)


def dest_full_attr(service, dest):
    return _dest_full_pack(service.family, packed_address(service.family, dest.address), dest.port,
                           dest.forwarding, dest.weight, dest.u_threshold, dest.l_threshold)


def dest_id_attr(service, dest):
    body = (nl.attr(IPVS_DEST_ATTR_ADDR, packed_address(service.family, dest.address))
            + nl.attr_be16(IPVS_DEST_ATTR_PORT, dest.port)
            + nl.attr_u16(IPVS_DEST_ATTR_ADDR_FAMILY, ADDRESS_FAMILY[service.family]))
    return nl.attr_nested(IPVS_CMD_ATTR_DEST, body)


class ChangeEncoder:
    """Packs changes into IPVS messages; the service identity is packed once per service."""

    def __init__(self, family_id):
        self.family_id = family_id
        self._service_ids = {}

    def _service_id(self, service):
        packed = self._service_ids.get(service.key)
        if packed is None:
            packed = nl.attr_nested(IPVS_CMD_ATTR_SERVICE, service_id_attr(service))
            self._service_ids[service.key] = packed
        return packed

    def payload(self, change):
        """The generic netlink payload (genl header + attributes) of one change."""
        op, service, dest = change
        if op == ADD_DEST:
            return _GENL[IPVS_CMD_NEW_DEST] + self._service_id(service) + dest_full_attr(service, dest)
        if op == SET_DEST:
            return _GENL[IPVS_CMD_SET_DEST] + self._service_id(service) + dest_full_attr(service, dest)
        if op == DEL_DEST:
            return _GENL[IPVS_CMD_DEL_DEST] + self._service_id(service) + dest_id_attr(service, dest)
        if op == ADD_SERVICE:
            return _GENL[IPVS_CMD_NEW_SERVICE] + service_full_attr(service)
        if op == SET_SERVICE:
            return _GENL[IPVS_CMD_SET_SERVICE] + service_full_attr(service)
        if op == DEL_SERVICE:
            return _GENL[IPVS_CMD_DEL_SERVICE] + self._service_id(service)
        raise ValueError(f"unknown change {op!r}")

    def request(self, change):
        """(change, message type, flags, body) as NetlinkSocket.transact takes it."""
        return (change, self.family_id, 0, self.payload(change))


# --- decoding -------------------------------------------------------------------------------


def _address_text(family, data, offset, cache):
    raw = data[offset:offset + ADDRESS_BYTES[family]]
    text = cache.get(raw)
    if text is None:
        text = socket.inet_ntop(ADDRESS_FAMILY[family], raw)
        cache[raw] = text
    return text


def decode_service(data, start, end, cache=None):
    """A Service from the nested IPVS_CMD_ATTR_SERVICE payload data[start:end] (walks the
    attributes once: a dump of 10k services decodes 10k of these)."""
    cache = {} if cache is None else cache
    u32 = _U32.unpack_from
    family_number = protocol = port = fwmark = flags = timeout = 0
    address_at = netmask_at = -1
    scheduler = b""
    for kind, value_at, length in nl.iter_attrs(data, start, end):
        if kind == IPVS_SVC_ATTR_AF:
            family_number = nl.U16.unpack_from(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_PROTOCOL:
            protocol = nl.U16.unpack_from(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_ADDR:
            address_at = value_at
        elif kind == IPVS_SVC_ATTR_PORT:
            port = nl.BE16.unpack_from(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_FWMARK:
            fwmark = u32(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_SCHED_NAME:
            scheduler = data[value_at:value_at + length]
        elif kind == IPVS_SVC_ATTR_FLAGS:
            flags = _FLAGS.unpack_from(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_TIMEOUT:
            timeout = u32(data, value_at)[0]
        elif kind == IPVS_SVC_ATTR_NETMASK:
            netmask_at = value_at
    family = OF_ADDRESS_FAMILY.get(family_number)
    if family is None or (not fwmark and address_at < 0):
        raise KubeIpvsError(f"the kernel sent an IPVS service without its family or address (family {family_number})")
    netmask = None if netmask_at < 0 else (_BE32 if family == IPV4 else _U32).unpack_from(data, netmask_at)[0]
    if fwmark:
        service = Service(family, fwmark=fwmark, netmask=netmask)
    else:
        service = Service(family, protocol, _address_text(family, data, address_at, cache), port, netmask=netmask)
    service.scheduler = scheduler.split(b"\0", 1)[0].decode()
    service.flags = flags
    service.timeout = timeout
    return service


def decode_dest(data, start, end, family, cache):
    """A Dest from the nested IPVS_CMD_ATTR_DEST payload (walks the attributes once)."""
    u32 = _U32.unpack_from
    address_at = port = forwarding = weight = u_thr = l_thr = active = inactive = 0
    dest_family = family
    for kind, value_at, _length in nl.iter_attrs(data, start, end):
        if kind == IPVS_DEST_ATTR_ADDR:
            address_at = value_at
        elif kind == IPVS_DEST_ATTR_PORT:
            port = nl.BE16.unpack_from(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_FWD_METHOD:
            forwarding = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_WEIGHT:
            weight = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_U_THRESH:
            u_thr = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_L_THRESH:
            l_thr = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_ACTIVE_CONNS:
            active = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_INACT_CONNS:
            inactive = u32(data, value_at)[0]
        elif kind == IPVS_DEST_ATTR_ADDR_FAMILY:
            dest_family = OF_ADDRESS_FAMILY.get(nl.U16.unpack_from(data, value_at)[0], family)
    address = _address_text(dest_family, data, address_at, cache)
    return Dest(address, port, forwarding, weight, u_thr, l_thr, active, inactive)


def _top_attr(data, start, end, kind):
    """(offset, end) of the payload of top-level attribute ``kind`` after the genl header."""
    for found, offset, length in nl.iter_attrs(data, start + 4, end):
        if found == kind:
            return offset, offset + length
    return None


PROC_IP_VS = "/proc/net/ip_vs"
PROC_PROTOCOLS = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}
PROC_FORWARDING = {"Masq": FWD_MASQ, "Local": FWD_LOCAL, "Tunnel": FWD_TUNNEL, "Route": FWD_ROUTE}
PROC_FORWARDING_NAMES = {number: name for name, number in PROC_FORWARDING.items()}


def _proc_address(host, cache):
    """The canonical text of a /proc address: ``0A600001`` or ``[fd00:0010:...:0001]``."""
    address = cache.get(host)
    if address is None:
        if host[0] == "[":
            address = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host[1:-1]))
        else:
            address = socket.inet_ntoa(bytes.fromhex(host))
        cache[host] = address
    return address


def _proc_host(address, cache):
    """The /proc text of a canonical address, the inverse of ``_proc_address``."""
    host = cache.get(address)
    if host is None:
        if ":" in address:
            digits = socket.inet_pton(socket.AF_INET6, address).hex()
            host = "[" + ":".join(digits[at:at + 4] for at in range(0, 32, 4)) + "]"
        else:
            host = socket.inet_aton(address).hex().upper()
        cache[address] = host
    return host


def _proc_tail(port, forwarding, weight):
    """What follows the address in a real server's /proc line, up to the connection counts
    (``:1F90      Masq    1     ``); "" when the kernel could not print it that way."""
    name = PROC_FORWARDING_NAMES.get(forwarding)
    if name is None or not 0 <= port <= 0xFFFF or not 0 <= weight <= 999999:
        return ""
    return f":{port:04X}      {name:<7} {weight:<6}"


class ProcTable:
    """/proc/net/ip_vs read once: the real-server lines of each address service, kept as text.

    Real-server lines (``  -> C0A8010A:1F90      Masq    1      0          0``) are most of the
    text at scale, and most of a no-op run would go into decoding them into Dest objects and
    comparing those with the desired ones. So ``real_servers(key, expected)`` first renders the
    expected real servers the way the kernel prints them, up to the weight, and compares the two
    sets of strings: equal text means equal keys, forwarding and weight, and the expected mapping
    itself is handed back - nothing decoded, nothing compared again. Any difference (another
    kernel's spacing too) only means the lines are decoded in full. Thresholds are not in /proc:
    real servers expected with thresholds are never vouched for here (the reader asks netlink).
    fwmark services are not in the table (their lines do not say the family).
    """

    def __init__(self, text):
        self._lines = {}
        # {proc host: address}, {address: proc host}, {(port, forwarding, weight): _proc_tail}: shared by
        # every service of one read (a pod IP recurs in every Service port it backs).
        self._addresses, self._hosts, self._tails = {}, {}, {}
        lines = None
        for line in text.splitlines():
            if line[:2] == "  ":
                if lines is not None:
                    lines.append(line)
                continue
            parts = line.split(None, 2)
            protocol = PROC_PROTOCOLS.get(parts[0]) if parts else None
            if protocol is None or len(parts) < 2:
                lines = None  # header lines, FWM services, unknown protocols
                continue
            host_port = parts[1]
            family = IPV6 if host_port[0] == "[" else IPV4
            address = _proc_address(host_port[:-5], self._addresses)
            lines = []
            self._lines[(family, protocol, address, int(host_port[-4:], 16), 0)] = lines

    def __iter__(self):
        return iter(self._lines)

    def __contains__(self, key):
        return key in self._lines

    def real_servers(self, key, expected=None):
        """{(address, port): Dest} of the service ``key``: ``expected`` itself when the kernel prints
        exactly those real servers, else the lines decoded (thresholds read as 0)."""
        lines = self._lines[key]
        if expected is not None and self._same(lines, expected):
            return expected
        cache = self._addresses
        dests = {}
        forwarding_of = PROC_FORWARDING
        for line in lines:
            parts = line.split()
            if len(parts) < 6:
                continue
            host_port = parts[1]
            address = _proc_address(host_port[:-5], cache)  # the port is always 4 hex digits
            port = int(host_port[-4:], 16)
            dests[(address, port)] = Dest(address, port, forwarding_of.get(parts[2], FWD_MASQ), int(parts[3]),
                                          0, 0, int(parts[4]), int(parts[5]))
        return dests

    def _same(self, lines, expected):
        """True only if ``expected`` ({key: Dest}) has exactly these real servers with the same
        forwarding and weight and no thresholds; False means "decode and compare", not "different"."""
        if len(lines) != len(expected):
            return False
        hosts, tails = self._hosts, self._tails
        host_of, tail_of = hosts.get, tails.get
        wanted = set()
        for dest in expected.values():
            if dest.u_threshold or dest.l_threshold:
                return False
            host = host_of(dest.address)
            if host is None:
                host = _proc_host(dest.address, hosts)
            settings = (dest.port, dest.forwarding, dest.weight)
            tail = tail_of(settings)
            if tail is None:
                tail = tails[settings] = _proc_tail(*settings)
            if not tail:
                return False
            wanted.add(host + tail)
        if not wanted:
            return True
        end = 5 + len(next(iter(wanted)))  # every line starts with "  -> "
        return wanted == {line[5:end] for line in lines}


def keys_with_thresholds(services):
    """Keys of the services whose real servers use connection thresholds: these must be read
    by netlink, since /proc/net/ip_vs does not show thresholds."""
    return {service.key for service in services
            if any(dest.u_threshold or dest.l_threshold for dest in service.dests.values())}


def refused(changes, failures):
    """The KubeIpvsError of a batch the kernel applied only in part: ``failures`` [(change, errno)]."""
    lines = [f"{change_line(change)}: {os.strerror(code)}" for change, code in failures[:20]]
    return KubeIpvsError(f"the kernel refused {len(failures)} of {len(changes)} IPVS changes "
                         f"(the others were applied): {'; '.join(lines)}", failed_changes=lines)


def _as_service(key):
    if isinstance(key, Service):
        return key
    family, protocol, address, port, fwmark = key
    return Service(family, protocol, address, port, fwmark)


# --- the kernel interface -------------------------------------------------------------------


class IpvsKernel:
    """The node's IPVS table: ``read()`` it once, ``apply()`` a change list, global timeouts.

    What ``read`` returns is plain data, {key: Service} with {(address, port): Dest} real servers;
    the same interface is faked in memory by the unit tests (tests/unit/fakes).
    """

    def __init__(self, get_window=128):
        self.sock = nl.NetlinkSocket(nl.NETLINK_GENERIC, what="IPVS netlink request")
        self.family_id = nl.resolve_genl_family(self.sock, IPVS_GENL_NAME)
        if self.family_id is None:
            self.sock.close()
            raise KubeIpvsError("the kernel has no IPVS generic netlink family: load the ip_vs module "
                                "(modprobe ip_vs) or run kubeipvs.node's node role first")
        self.get_window = get_window

    def close(self):
        self.sock.close()

    def _request(self, flags, command, attrs):
        seq = self.sock.next_seq()
        return seq, nl.genl_message(self.family_id, flags, seq, command, IPVS_GENL_VERSION, attrs)

    def read(self, keys=None, expected=None, real_servers=True, proc_path=PROC_IP_VS):
        """{key: Service} with every real server and its connection counts.

        ``keys`` None reads the whole table: one GET_SERVICE dump for the services, and the real
        servers of address services from one read of /proc/net/ip_vs (measured ~10x faster than
        one GET_DEST dump per service, which is what ``ipvsadm -Sn`` does; see docs/performance.md).
        ``expected`` ({key: Service}, the table the caller is about to compare with) spares the
        decoding of real servers the kernel holds exactly as expected: such a service gets the
        expected mapping itself (see ProcTable; its connection counts are not read). /proc does not
        show connection thresholds, so services expected with thresholds, and fwmark services (whose
        family /proc does not show), get their real servers by netlink. ``real_servers=False``
        reads the services alone.
        With ``keys``, only the services named (a Service or key each) are read, all by netlink.
        """
        cache = {}
        services = {}
        if keys is None:
            _seq, request = self._request(DUMP_FLAGS, IPVS_CMD_GET_SERVICE, b"")
            messages = self.sock.dump(request)
        else:
            requests = [self._request(ACK_FLAGS, IPVS_CMD_GET_SERVICE,
                                      nl.attr_nested(IPVS_CMD_ATTR_SERVICE, service_id_attr(_as_service(key))))
                        for key in keys]
            replies = self.sock.dump_many(requests, window=self.get_window, tolerate=(errno.ESRCH, errno.ENOENT))
            messages = [message for seq, _request in requests for message in replies[seq]]
        for data, start, end in messages:
            found = _top_attr(data, start, end, IPVS_CMD_ATTR_SERVICE)
            if found:
                service = decode_service(data, found[0], found[1], cache)
                services[service.key] = service
        if not real_servers:
            return services
        if keys is not None:
            self._read_dests(services.values(), cache)
            return services
        with open(proc_path) as handle:
            proc = ProcTable(handle.read())
        expected = expected or {}
        by_netlink = []
        exact = keys_with_thresholds(expected.values())
        for key, service in services.items():
            if service.fwmark or key in exact or key not in proc:
                by_netlink.append(service)
            else:
                wanted = expected.get(key)
                service.dests = proc.real_servers(key, wanted.dests if wanted is not None else None)
        self._read_dests(by_netlink, cache)
        return services

    def _read_dests(self, services, cache):
        encoder = ChangeEncoder(self.family_id)
        requests = []
        by_seq = {}
        for service in services:
            seq, request = self._request(DUMP_FLAGS, IPVS_CMD_GET_DEST, encoder._service_id(service))
            requests.append((seq, request))
            by_seq[seq] = service
        replies = self.sock.dump_many(requests)  # one dump at a time: see dump_many
        for seq, messages in replies.items():
            service = by_seq[seq]
            dests = service.dests = {}
            for data, start, end in messages:
                found = _top_attr(data, start, end, IPVS_CMD_ATTR_DEST)
                if found:
                    dest = decode_dest(data, found[0], found[1], service.family, cache)
                    dests[(dest.address, dest.port)] = dest

    def apply(self, changes):
        """Send every change (batched, ACKed); raise with the failed changes named."""
        encoder = ChangeEncoder(self.family_id)
        failures = self.sock.transact(encoder.request(change) for change in changes)
        if failures:
            raise refused(changes, failures)

    def get_timeouts(self):
        _seq, request = self._request(ACK_FLAGS, IPVS_CMD_GET_CONFIG, b"")
        timeouts = {}
        for data, start, end in self.sock.dump(request):
            attrs = nl.parse_attrs(data, start + 4, end)
            for name, kind in TIMEOUT_ATTRS.items():
                if kind in attrs:
                    timeouts[name] = _U32.unpack_from(data, attrs[kind][0])[0]
        return timeouts

    def set_timeouts(self, timeouts):
        attrs = b"".join(nl.attr_u32(TIMEOUT_ATTRS[name], value) for name, value in sorted(timeouts.items()))
        payload = _GENL[IPVS_CMD_SET_CONFIG] + attrs
        failures = self.sock.transact([("set-config", self.family_id, 0, payload)])
        if failures:
            raise KubeIpvsError(f"the kernel refused the IPVS timeouts {timeouts!r}: {os.strerror(failures[0][1])}")


class NoIpvs:
    """The IPVS table of a kernel that has not loaded ip_vs yet, in check mode: empty, and nothing
    is ever applied to it (check mode applies nothing)."""

    def read(self, keys=None, expected=None, real_servers=True):
        return {}

    def get_timeouts(self):
        return {}

    def close(self):
        pass


def missing_schedulers(schedulers, modprobe, check_mode, sys_module="/sys/module"):
    """Load ``ip_vs_<name>`` for each scheduler not loaded yet; return the names that cannot be.

    ``modprobe`` is a node/_kmod.Modprobe. In check mode only ``modprobe -n`` runs, which finds the
    module file without loading it.
    """
    missing = []
    for name in sorted(set(schedulers)):
        if os.path.isdir(os.path.join(sys_module, "ip_vs_" + name)):
            continue
        loaded, _message = modprobe.probe("ip_vs_" + name, dry_run=check_mode)
        if not loaded:
            missing.append(name)
    return missing


def open_ipvs(modprobe, check_mode, schedulers=(), proc_path=PROC_IP_VS):
    """The node's IPVS table (an IpvsKernel) ready for the given schedulers; NoIpvs in check mode
    when ip_vs is not loaded.

    Loads ``ip_vs`` when the kernel lacks it (not in check mode), then every ``ip_vs_<scheduler>``
    module, through ``modprobe`` (a node/_kmod.Modprobe); fails naming the schedulers this kernel
    cannot provide, before anything changed.
    """
    if not os.path.exists(proc_path):
        found, message = modprobe.probe("ip_vs", dry_run=check_mode)
        if not found:
            raise KubeIpvsError(f"this kernel has no ip_vs module: {message}" if check_mode
                                else f"cannot load the ip_vs kernel module: {message}")
        if check_mode:
            return NoIpvs()
    missing = missing_schedulers(schedulers, modprobe, check_mode)
    if missing:
        modules = ", ".join("ip_vs_" + name for name in missing)
        raise KubeIpvsError(f"the kernel cannot provide the IPVS scheduler(s) {', '.join(missing)}: "
                            f"modprobe finds no {modules}", missing_schedulers=missing)
    return IpvsKernel()
