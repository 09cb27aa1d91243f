# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS on the node: input normalisation, one-pass table dump, batched changes, global timeouts.

The generic netlink messages are packed by hand (attribute numbers from
include/uapi/linux/ip_vs.h, checked against ipvsadm on Debian's 6.1 kernel). Reading the whole
table costs one GET_SERVICE dump plus one read of /proc/net/ip_vs for the real servers, whose
lines are decoded only for services the planner cannot match by their text; changes go out
hundreds per send() with an ACK each, so a failure names the change that caused it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import socket
import struct
import tempfile

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    ADDRESS_FAMILY,
    HOST_PREFIX,
    IPV4,
    IPV6,
    OF_ADDRESS_FAMILY,
    OF_INET,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_DEST,
    ADD_SERVICE,
    DEL_DEST,
    DEL_SERVICE,
    FORWARDING_NUMBERS,
    FWD_LOCAL,
    FWD_MASQ,
    FWD_ROUTE,
    FWD_TUNNEL,
    NETMASK_HOST,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NUMBERS,
    SCHEDULER_FLAGS,
    SET_DEST,
    SET_SERVICE,
    SVC_F_PERSISTENT,
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

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos")
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


def read_proc_dests(path=PROC_IP_VS):
    """{service key: ProcDests} of the address services in /proc/net/ip_vs (one read)."""
    with open(path) as handle:
        text = handle.read()
    return parse_proc_ip_vs(text)


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


class ProcDests:
    """The real servers of one service as its /proc/net/ip_vs lines, decoded on first use.

    Decoding 100k real-server lines (and comparing 100k Dest objects) is most of a no-op run at
    scale, and a no-op changes nothing, so ``matches()`` first compares the lines' text up to the
    weight (``  -> 0A000001:1F90      Masq    1     ``) with the same text rendered from the
    desired real servers. Equal text means equal keys, forwarding and weight; anything else -
    another kernel's spacing included - only sends the planner to the full comparison. Otherwise
    this is a mapping {(address, port): Dest}, like the real servers read by netlink.
    """

    __slots__ = ("_caches", "_dests", "_lines")

    def __init__(self, lines, caches):
        self._lines = lines
        # ({proc host: address}, {address: proc host}, {(port, forwarding, weight): _proc_tail})
        self._caches = caches  # shared by the services of one read
        self._dests = None

    @property
    def _decoded(self):
        if self._dests is None:
            cache = self._caches[0]
            dests = self._dests = {}
            forwarding_of = PROC_FORWARDING
            for line in self._lines:
                parts = line.split()
                if len(parts) < 6:
                    continue
                host_port = parts[1]
                address = _proc_address(host_port[:-5], cache)  # the port is always 4 hex digits
                port = int(host_port[-4:], 16)
                dests[(address, port)] = Dest(address, port, forwarding_of.get(parts[2], FWD_MASQ), int(parts[3]),
                                              0, 0, int(parts[4]), int(parts[5]))
            self._lines = None
        return self._dests

    def matches(self, desired):
        """True only if ``desired`` ({key: Dest}) has exactly these real servers with the same
        forwarding and weight and no thresholds (/proc does not show them); False means "compare
        in full", not "different"."""
        lines = self._lines
        if lines is None or len(lines) != len(desired):
            return False
        hosts, tails = self._caches[1], self._caches[2]
        host_of, tail_of = hosts.get, tails.get
        wanted = set()
        for dest in desired.values():
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

    def __getitem__(self, key):
        return self._decoded[key]

    def __setitem__(self, key, dest):
        self._decoded[key] = dest

    def __contains__(self, key):
        return key in self._decoded

    def __iter__(self):
        return iter(self._decoded)

    def __len__(self):
        return len(self._lines) if self._dests is None else len(self._dests)

    def __eq__(self, other):
        return self._decoded == (other._decoded if isinstance(other, ProcDests) else other)

    __hash__ = None

    def get(self, key, default=None):
        return self._decoded.get(key, default)

    def pop(self, key, *default):
        return self._decoded.pop(key, *default)

    def keys(self):
        return self._decoded.keys()

    def values(self):
        return self._decoded.values()

    def items(self):
        return self._decoded.items()


def parse_proc_ip_vs(text):
    """{service key: ProcDests} from the kernel's /proc/net/ip_vs text. Thresholds are not in it
    and read as 0; fwmark services are skipped (the file does not say their family).

    Real-server lines (``  -> C0A8010A:1F90      Masq    1      0          0``) are most of the
    text at scale: here they are only grouped by service, and decoded when (if) the planner
    needs them; each address is converted once (a pod IP recurs in every Service port it backs).
    """
    table = {}
    caches = ({}, {}, {})
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
        address = _proc_address(host_port[:-5], caches[0])
        lines = []
        table[(family, protocol, address, int(host_port[-4:], 16), 0)] = ProcDests(lines, caches)
    return table


def _as_service(key):
    if isinstance(key, Service):
        return key
    family, protocol, address, port, fwmark = key
    return Service(family, protocol, address, port, fwmark)


# --- the kernel interface -------------------------------------------------------------------


class IpvsKernel:
    """The node's IPVS table: ``read()`` it once, ``apply()`` a change list, global timeouts.

    The same interface is faked in memory by the unit tests (tests/unit/fakes).
    """

    def __init__(self, get_window=128):
        self.sock = nl.NetlinkSocket(nl.NETLINK_GENERIC)
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

    def read(self, keys=None, exact=()):
        """{key: Service} with every real server and its connection counts.

        ``keys`` None reads the whole table: one GET_SERVICE dump for the services, and the real
        servers of address services from one read of /proc/net/ip_vs (measured ~10x faster than
        one GET_DEST dump per service, which is what ``ipvsadm -Sn`` does; see docs/performance.md),
        as ProcDests that decode their lines only when the planner needs them.
        /proc does not show the connection thresholds, so they read as 0 there; services in
        ``exact`` (the ones whose desired real servers use thresholds) and fwmark services (whose
        family /proc does not show) get their real servers by netlink.
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
        if keys is not None:
            self._read_dests(services.values(), cache)
            return services
        by_proc = read_proc_dests()
        by_netlink = []
        exact = set(exact)
        for key, service in services.items():
            if service.fwmark or key in exact or key not in by_proc:
                by_netlink.append(service)
            else:
                service.dests = by_proc[key]
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
            lines = [f"{change_line(change)}: {os.strerror(code)}" for change, code in failures[:20]]
            raise KubeIpvsError(f"the kernel refused {len(failures)} of {len(changes)} IPVS changes "
                                f"(the others were applied): {'; '.join(lines)}", failed_changes=lines)

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


inet_pton = socket.inet_pton

# --- input normalisation ----------------------------------------------------------------------


def _fail(where, text):
    raise KubeIpvsError(f"{where}: {text}")


def canonical_address(where, value, family=None):
    """(family, canonical text) of a host address; accepts a /32 or /128 suffix."""
    if family != IPV6 and type(value) is str:  # pylint: disable=unidiomatic-typecheck
        try:  # inet_pton accepts only canonical dotted quads, so such a text is already canonical
            inet_pton(socket.AF_INET, value)
            return IPV4, value
        except OSError:
            pass
    text = str(value).strip()
    if "/" in text:
        text, _slash, prefix = text.partition("/")
        if prefix not in ("32", "128"):
            _fail(where, f"{value!r} is not a host address (only /32 or /128 may follow it)")
    for candidate in ((family,) if family else (IPV4, IPV6)):
        try:
            packed = socket.inet_pton(ADDRESS_FAMILY[candidate], text)
        except (OSError, ValueError):
            continue
        if prefix_ok(candidate, value):
            return candidate, socket.inet_ntop(ADDRESS_FAMILY[candidate], packed)
    expected = {IPV4: "an IPv4", IPV6: "an IPv6"}.get(family, "an IPv4 or IPv6")
    _fail(where, f"{value!r} is not {expected} address")


def prefix_ok(family, value):
    text = str(value)
    if "/" not in text:
        return True
    return text.rsplit("/", 1)[1] == str(HOST_PREFIX[family])


def _int(where, entry, name, default, low, high):
    value = entry.get(name)
    if value is None:
        return default
    if type(value) is int and low <= value <= high:  # pylint: disable=unidiomatic-typecheck
        return value  # the common case, and a bool (an int too) still goes the long way to be refused
    if isinstance(value, bool):
        _fail(where, f"{name} must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        _fail(where, f"{name} must be an integer, not {value!r}")
    if str(number) != str(value).strip() and not isinstance(value, int):
        _fail(where, f"{name} must be an integer, not {value!r}")
    if not low <= number <= high:
        _fail(where, f"{name} must be between {low} and {high}, not {number}")
    return number


SERVICE_KEYS = frozenset(("protocol", "address", "port", "fwmark", "family", "scheduler", "scheduler_flags",
                          "persistence_timeout", "netmask", "real_servers", "purge_real_servers", "state"))
DEST_KEYS = frozenset(("address", "port", "weight", "forwarding", "upper_threshold", "lower_threshold"))


def normalize_service(entry, where="service", purge_default=True, addresses=None):
    """A validated Service from one user entry (module options or one item of a services file).

    Raises KubeIpvsError naming the entry and the field to fix. The returned Service has
    ``state`` information in the second item: (service, state).
    """
    if not isinstance(entry, dict):
        _fail(where, f"must be a mapping, not {entry!r}")
    if not SERVICE_KEYS.issuperset(entry):
        unknown = sorted(name for name, value in entry.items() if name not in SERVICE_KEYS and value is not None)
        if unknown:
            _fail(where, f"unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(SERVICE_KEYS))})")
    family_name = entry.get("family")
    if family_name is not None and family_name not in OF_INET:
        _fail(where, f"family must be inet or inet6, not {family_name!r}")
    family = OF_INET.get(family_name)
    fwmark = _int(where, entry, "fwmark", 0, 1, 0xFFFFFFFF)
    if fwmark:
        for name in ("protocol", "address", "port"):
            if entry.get(name) is not None:
                _fail(where, f"a fwmark service has no {name}: give either fwmark or protocol/address/port")
        service = Service(family or IPV4, fwmark=fwmark)
    else:
        for name in ("address", "port"):
            if entry.get(name) is None:
                _fail(where, f"{name} is required (or give fwmark)")
        protocol = entry.get("protocol") or "tcp"
        if protocol not in PROTOCOL_NUMBERS:
            _fail(where, f"protocol must be one of tcp, udp, sctp, not {protocol!r}")
        family, address = canonical_address(where + ".address", entry["address"], family)
        port = _int(where, entry, "port", 0, 1, 65535)
        service = Service(family, PROTOCOL_NUMBERS[protocol], address, port)
    scheduler = entry.get("scheduler") or "rr"
    if scheduler not in SCHEDULERS:
        _fail(where, f"unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})")
    service.scheduler = scheduler
    flags = 0
    for flag in entry.get("scheduler_flags") or ():
        if flag not in SCHEDULER_FLAGS:
            _fail(where, f"unknown scheduler flag {flag!r} (known: {', '.join(sorted(SCHEDULER_FLAGS))})")
        if flag.split("-")[0] != scheduler:
            owner = flag.split("-")[0]
            _fail(where, f"scheduler flag {flag} only applies to the {owner} scheduler, not {scheduler}")
        flags |= SCHEDULER_FLAGS[flag]
    timeout = _int(where, entry, "persistence_timeout", 0, 0, 2147483)
    if timeout:
        flags |= SVC_F_PERSISTENT
    service.flags = flags
    service.timeout = timeout
    service.netmask = _netmask(where, service.family, entry.get("netmask"))
    purge = entry.get("purge_real_servers")
    service.purge = purge_default if purge is None else bool(purge)
    state = entry.get("state") or "present"
    if state not in ("present", "absent"):
        _fail(where, f"state must be present or absent, not {state!r}")
    addresses = ({IPV4: {}, IPV6: {}} if addresses is None else addresses)[service.family]
    servers = entry.get("real_servers") or []
    if not isinstance(servers, list):
        _fail(where, "real_servers must be a list")
    dests = service.dests
    default_port = 0 if fwmark else service.port
    min_port = 0 if fwmark else 1
    ipv4 = service.family == IPV4
    for index, server in enumerate(servers):
        dest = _plain_dest(server, addresses, default_port, min_port, ipv4)
        if dest is None:
            dest = _normalize_dest(where, index, server, service, addresses)
        key = (dest.address, dest.port)
        if key in dests:
            _fail(where, f"real server {dest.label(service.family)} is listed twice")
        dests[key] = dest
    return service, state


def _netmask(where, family, value):
    if value is None or value == "":
        return NETMASK_HOST[family]
    text = str(value).strip().lstrip("/")
    if family == IPV6:
        if not text.isdigit() or not 1 <= int(text) <= 128:
            _fail(where, f"netmask of an IPv6 service is a prefix length 1-128, not {value!r}")
        return int(text)
    if text.isdigit() and int(text) <= 32:
        return (0xFFFFFFFF << (32 - int(text))) & 0xFFFFFFFF
    try:
        mask = struct.unpack("!I", socket.inet_pton(socket.AF_INET, text))[0]
    except OSError:
        _fail(where, f"netmask must be a dotted IPv4 mask or a prefix length, not {value!r}")
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        _fail(where, f"netmask {value!r} is not contiguous")
    return mask


def _small_int(value, low, high):
    """``value`` when it is already a plain int in range (the fast path at 100k real servers)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high else None


PLAIN_DEST_KEYS = frozenset(("address", "port", "weight"))


def _plain_dest(server, addresses, default_port, min_port, ipv4):
    """The Dest of the common real-server shape - a mapping of an address already seen in this
    family (``addresses``) or a canonical IPv4 one, an int port and weight in range, nothing
    else - or None, and then ``_normalize_dest`` validates it in full. At 100k real servers this
    is most of the validation cost of a run, so it does only what that shape needs."""
    # Exact types on purpose: a bool is an int too, and must go to the full validation to be
    # refused; so must an address that is not a text (a list is not even a key of ``addresses``).
    if type(server) is not dict or not PLAIN_DEST_KEYS.issuperset(server):  # pylint: disable=unidiomatic-typecheck
        return None
    raw = server.get("address")
    if type(raw) is not str:  # pylint: disable=unidiomatic-typecheck
        return None
    address = addresses.get(raw)
    if address is None:
        if not ipv4:
            return None
        try:  # inet_pton accepts only canonical dotted quads, so the text is already canonical
            inet_pton(socket.AF_INET, raw)
        except OSError:
            return None
        address = addresses[raw] = raw
    port = server.get("port", default_port)
    weight = server.get("weight", 1)
    if (type(port) is not int or type(weight) is not int  # pylint: disable=unidiomatic-typecheck
            or not min_port <= port <= 65535 or not 0 <= weight <= 65535):
        return None
    return Dest(address, port, FWD_MASQ, weight)


def _normalize_dest(service_where, index, server, service, addresses):
    """A Dest from one real_servers item. ``addresses`` caches canonical addresses of the
    service's family: at 10k services x 10 real servers this runs 100k times, pod IPs recur."""
    if not isinstance(server, dict):
        if isinstance(server, str):
            server = {"address": server}
        elif not isinstance(server, dict):
            _fail(f"{service_where}.real_servers[{index}]",
                  f"must be a mapping with address (and port, weight, ...), not {server!r}")
    extra = server.keys() - DEST_KEYS
    if extra and any(server[name] is not None for name in extra):
        _fail(f"{service_where}.real_servers[{index}]",
              f"unknown key(s) {', '.join(sorted(extra))} (allowed: {', '.join(sorted(DEST_KEYS))})")
    raw = server.get("address")
    is_text = isinstance(raw, str)
    address = addresses.get(raw) if is_text else None
    if address is None and service.family == IPV4 and is_text:
        try:  # inet_pton accepts only canonical dotted quads, so the text is already canonical
            inet_pton(socket.AF_INET, raw)
            address = raw
        except OSError:
            pass
    if address is None:
        where = f"{service_where}.real_servers[{index}]"
        if raw is None:
            _fail(where, "address is required")
        address = canonical_address(where + ".address", raw, service.family)[1]
        if is_text:
            addresses[raw] = address
    port = _small_int(server.get("port"), 0 if service.fwmark else 1, 65535)
    if port is None:
        default = 0 if service.fwmark else service.port
        port = _int(f"{service_where}.real_servers[{index}]", server, "port", default,
                    0 if service.fwmark else 1, 65535)
    forwarding = FORWARDING_NUMBERS.get(server.get("forwarding") or "nat")
    if forwarding is None:
        _fail(f"{service_where}.real_servers[{index}]",
              f"forwarding must be nat, route or tunnel, not {server.get('forwarding')!r}")
    weight = _small_int(server.get("weight", 1), 0, 65535)
    if weight is None:
        weight = _int(f"{service_where}.real_servers[{index}]", server, "weight", 1, 0, 65535)
    upper = lower = 0
    if server.get("upper_threshold") or server.get("lower_threshold"):
        where = f"{service_where}.real_servers[{index}]"
        upper = _int(where, server, "upper_threshold", 0, 0, 2147483647)
        lower = _int(where, server, "lower_threshold", 0, 0, 2147483647)
        if lower > upper:
            _fail(where, f"lower_threshold ({lower}) must not exceed upper_threshold ({upper})")
    return Dest(address, port, forwarding, weight, upper, lower)


def normalize_services(entries, where="services", purge_default=True):
    """(services to have, services to delete) from a list of entries; duplicates are an error."""
    if not isinstance(entries, list):
        _fail(where, "must be a list of services")
    desired, absent, seen, addresses = [], [], {}, {IPV4: {}, IPV6: {}}
    for index, entry in enumerate(entries):
        label = f"{where}[{index}]"
        service, state = normalize_service(entry, label, purge_default, addresses)
        if service.key in seen:
            _fail(label, f"duplicate of {seen[service.key]} ({service.label()})")
        seen[service.key] = label
        (desired if state == "present" else absent).append(service)
    return desired, absent


def keys_with_thresholds(services):
    """Keys of the services whose real servers use connection thresholds: these must be read
    by netlink, since /proc/net/ip_vs does not show thresholds."""
    return {service.key for service in services
            if any(dest.u_threshold or dest.l_threshold for dest in service.dests.values())}


# --- scheduler modules ------------------------------------------------------------------------


def missing_schedulers(schedulers, run_command, check_mode, sys_module="/sys/module"):
    """Load ``ip_vs_<name>`` for each scheduler not loaded yet; return the names that cannot be.

    ``run_command(argv) -> (rc, stdout, stderr)``. In check mode only ``modprobe -n`` runs, which
    finds the module file without loading it.
    """
    missing = []
    for name in sorted(set(schedulers)):
        module = "ip_vs_" + name
        if os.path.isdir(os.path.join(sys_module, module)):
            continue
        argv = ["modprobe", "-n", module] if check_mode else ["modprobe", module]
        rc, _out, _err = run_command(argv)
        if rc != 0:
            missing.append(name)
    return missing


# --- drain bookkeeping ------------------------------------------------------------------------

DRAIN_STATE_PATH = "/run/kubeipvs/ipvs-drain.json"


def load_drain_state(path=DRAIN_STATE_PATH):
    """{service label: {real server label: unix time draining started}}; missing file = {}."""
    try:
        with open(path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged file only restarts the drain clocks
    return state if isinstance(state, dict) else {}


def save_drain_state(state, path=DRAIN_STATE_PATH):
    """Write the drain state atomically (temp file + rename); /run keeps it until reboot."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".ipvs-drain.", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(state, stream, sort_keys=True)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def open_ipvs(run_command, check_mode, schedulers=()):
    """An IpvsKernel ready for the given schedulers, or None in check mode when ip_vs is not loaded.

    Loads ``ip_vs`` when the kernel lacks the IPVS family (not in check mode), then every
    ``ip_vs_<scheduler>`` module; fails naming the schedulers this kernel cannot provide.
    """
    if not os.path.exists("/proc/net/ip_vs"):
        if check_mode:
            rc, _out, err = run_command(["modprobe", "-n", "ip_vs"])
            if rc != 0:
                raise KubeIpvsError(f"this kernel has no ip_vs module: {err.strip()}")
            return None
        rc, _out, err = run_command(["modprobe", "ip_vs"])
        if rc != 0:
            raise KubeIpvsError(f"cannot load the ip_vs kernel module: {err.strip()}")
    missing = missing_schedulers(schedulers, run_command, check_mode)
    if missing:
        modules = ", ".join("ip_vs_" + name for name in missing)
        raise KubeIpvsError(f"the kernel cannot provide the IPVS scheduler(s) {', '.join(missing)}: "
                            f"modprobe finds no {modules}", missing_schedulers=missing)
    return IpvsKernel()


@contextlib.contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector for a whole-table run.

    A table of 10k services x 10 real servers is over 200k container objects (the input and the
    validated services), none of them in a reference cycle; with the collector on, every 700 new
    containers start a pass and every few thousand a pass over all of them. Measured in the lab
    VM, a no-op at 10k x 10 in a fresh process: 9.5-10.1 s CPU paused against 11.3-12.5 s not
    (four pairs). Reference counting still frees everything as usual; only cycles wait until the
    collector is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
