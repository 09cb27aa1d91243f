# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small netlink socket with hand-packed messages, batched sends and ACK/dump collection.

Why not pyroute2 for the hot path: it costs 0.3-0.6 ms per request plus ~0.3 ms to encode one
IPVS message in pure Python; a message packed with ``struct`` costs a few microseconds, and
one ``send()`` can carry hundreds of them. Each request gets its own sequence number, so every
error the kernel reports maps back to the request that caused it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
NLATTR = struct.Struct("=HH")  # length, type
U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")
BE16 = struct.Struct("!H")
NLMSGERR_CODE = struct.Struct("=i")

# Enough for a few hundred messages per send() while staying well below the socket buffers.
DEFAULT_BATCH_BYTES = 256 * 1024
SOCKET_BUFFER_BYTES = 32 * 1024 * 1024
RECV_BYTES = 1024 * 1024


class NetlinkError(KubeIpvsError):
    """The kernel answered a request with an error (``code`` is a positive errno).

    A domain error like any other: ``what`` says which request failed, and the module's one
    boundary (_errors.run_module) turns it into the task's failure.
    """

    def __init__(self, code, request=None, what="netlink request"):
        super().__init__(f"{what} failed: {os.strerror(code)} (errno {code})")
        self.code = code
        self.request = request


def align4(length):
    return (length + 3) & ~3


def attr(kind, payload):
    """One netlink attribute (type + payload, padded to 4 bytes)."""
    length = 4 + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (align4(length) - length)


def attr_u16(kind, value):
    return NLATTR.pack(6, kind) + U16.pack(value) + b"\0\0"


def attr_be16(kind, value):
    return NLATTR.pack(6, kind) + BE16.pack(value) + b"\0\0"


def attr_u32(kind, value):
    return NLATTR.pack(8, kind) + U32.pack(value)


def attr_str(kind, text):
    return attr(kind, text.encode() + b"\0")


def attr_nested(kind, payload):
    return attr(kind | NLA_F_NESTED, payload)


def message(msg_type, flags, seq, payload):
    """A whole netlink message: header + payload (``payload`` already holds any family header)."""
    return NLMSGHDR.pack(16 + len(payload), msg_type, flags, seq, 0) + payload


def iter_attrs(data, start=0, end=None):
    """(type, offset of payload, payload length) of each attribute of one level, in order."""
    if end is None:
        end = len(data)
    unpack = NLATTR.unpack_from
    offset = start
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, offset + 4, length - 4
        offset += (length + 3) & ~3


def parse_attrs(data, start=0, end=None):
    """Attributes of one level as {type: (offset of payload, payload length)} (last one wins)."""
    return {kind: (offset, length) for kind, offset, length in iter_attrs(data, start, end)}


def iter_messages(data):
    """(type, flags, seq, offset of payload, end of message) for every message in one datagram."""
    offset = 0
    size = len(data)
    unpack = NLMSGHDR.unpack_from
    while offset + 16 <= size:
        length, msg_type, flags, seq, _port = unpack(data, offset)
        if length < 16:
            break
        yield msg_type, flags, seq, offset + 16, offset + length
        offset += (length + 3) & ~3


class NetlinkSocket:
    """One netlink socket: batched requests, ACKs mapped to sequence numbers, pipelined dumps.

    ``what`` names the socket's requests in the errors it raises ("IPVS netlink request").
    """

    what = "netlink request"

    def __init__(self, protocol, batch_bytes=DEFAULT_BATCH_BYTES, what=None):
        self.batch_bytes = batch_bytes
        if what:
            self.what = what
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._grow_buffers()
        # Errors echo only the header, not the whole request: keeps ACK traffic small.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.sock.settimeout(30)
        self.seq = 0

    def _grow_buffers(self):
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
            except OSError:  # not root: take what rmem_max/wmem_max allow
                self.sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def next_seq(self):
        self.seq += 1
        return self.seq

    def _recv(self):
        try:
            return self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT, what=self.what) from None

    def _send_all(self, chunks):
        data = b"".join(chunks)
        sent = self.sock.send(data)
        if sent != len(data):
            raise NetlinkError(errno.EMSGSIZE, what=self.what)

    def transact(self, requests):
        """Send change requests in batches, many per send(); return [(tag, errno)] of the failed ones.

        ``requests`` is an iterable of (tag, message type, flags, body). Only the last message of
        a batch asks for an ACK: the kernel handles a whole send() before the call returns and
        reports every failed message anyway (an error is always answered), so one recv() per
        batch plus one per error replaces one recv() per message. The kernel goes on with the
        next message after an error.
        """
        failures = []
        batch = []
        size = 0
        for request in requests:
            batch.append(request)
            size += 16 + len(request[3])
            if size >= self.batch_bytes:
                failures.extend(self._send_batch(batch))
                batch, size = [], 0
        if batch:
            failures.extend(self._send_batch(batch))
        return failures

    def _send_batch(self, batch):
        pack = NLMSGHDR.pack
        tags = {}
        chunks = []
        last = len(batch) - 1
        for position, (tag, msg_type, flags, body) in enumerate(batch):
            self.seq += 1
            tags[self.seq] = tag
            if position == last:
                flags |= NLM_F_ACK
            chunks.append(pack(16 + len(body), msg_type, flags | NLM_F_REQUEST, self.seq, 0))
            chunks.append(body)
        last_seq = self.seq
        self._send_all(chunks)
        failures = []
        while True:
            data = self._recv()
            for msg_type, _flags, seq, start, _end in iter_messages(data):
                if msg_type != NLMSG_ERROR or seq not in tags:
                    continue
                code = -NLMSGERR_CODE.unpack_from(data, start)[0]
                if code:
                    failures.append((tags[seq], code))
                if seq == last_seq:
                    return failures

    def dump(self, request_bytes):
        """One dump request (already numbered with ``next_seq``); returns the reply datagrams."""
        seq = NLMSGHDR.unpack_from(request_bytes, 0)[3]
        results = self.dump_many([(seq, request_bytes)])
        return results[seq]

    def dump_many(self, numbered_requests, window=1, tolerate=()):
        """Run many requests that answer with data, ``window`` of them per send().

        Returns {seq: [(datagram, offset of payload, end)]} with every reply message of each
        request. Plain GET requests (answered at once, with NLM_F_ACK) can share a send. Dumps
        cannot usefully: the kernel runs one dump per socket at a time, and a dump with data always
        needs a second pass (triggered by our recv) to say DONE, so a dump request that arrives
        before that gets EBUSY - it is then simply sent again. Errors listed in ``tolerate``
        (errno values) end that request with no replies instead of raising.
        """
        replies = {}
        queue = list(numbered_requests)
        position = 0
        while position < len(queue):
            current = queue[position:position + window]
            position += window
            self._send_all([request for _seq, request in current])
            pending = dict(current)
            retry = []
            while pending:
                data = self._recv()
                for msg_type, _flags, seq, start, end in iter_messages(data):
                    if seq not in pending:
                        continue
                    if msg_type == NLMSG_DONE:
                        del pending[seq]
                    elif msg_type == NLMSG_ERROR:
                        code = -NLMSGERR_CODE.unpack_from(data, start)[0]
                        request = pending.pop(seq)
                        if code == errno.EBUSY:
                            retry.append((seq, request))
                        elif code and code not in tolerate:
                            raise NetlinkError(code, what=self.what)
                    elif seq in replies:
                        replies[seq].append((data, start, end))
                    else:
                        replies[seq] = [(data, start, end)]
            if retry:
                queue[position:position] = retry
        for seq, _request in numbered_requests:
            replies.setdefault(seq, [])
        return replies


def genl_message(family_id, flags, seq, command, version, attrs):
    return message(family_id, flags, seq, GENLMSGHDR.pack(command, version, 0) + attrs)


def resolve_genl_family(sock, name):
    """The numeric id of a generic netlink family, or None when the kernel has no such family."""
    seq = sock.next_seq()
    request = genl_message(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1,
                           attr_str(CTRL_ATTR_FAMILY_NAME, name))
    sock._send_all([request])
    family_id = None
    while True:
        data = sock._recv()
        for msg_type, _flags, reply_seq, start, end in iter_messages(data):
            if reply_seq != seq:
                continue
            if msg_type == NLMSG_ERROR:
                code = -NLMSGERR_CODE.unpack_from(data, start)[0]
                if code == errno.ENOENT:
                    return None
                if code:
                    raise NetlinkError(code, what=sock.what)
                return family_id
            attrs = parse_attrs(data, start + GENLMSGHDR.size, end)
            if CTRL_ATTR_FAMILY_ID in attrs:
                family_id = U16.unpack_from(data, attrs[CTRL_ATTR_FAMILY_ID][0])[0]
