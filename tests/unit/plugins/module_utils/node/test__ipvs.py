# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The IPVS kernel adapter: message encoding/decoding against hand-built bytes, /proc parsing and
its text comparison, loading the modules, and the netlink batching/ACK logic against a scripted
socket."""

from __future__ import annotations

import errno
import random
import socket
import struct
import sys

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _netlink as nl
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs import (
    IPVS_CMD_ATTR_DEST,
    IPVS_CMD_ATTR_SERVICE,
    IPVS_CMD_DEL_DEST,
    IPVS_CMD_NEW_SERVICE,
    ChangeEncoder,
    ProcTable,
    decode_dest,
    decode_service,
    dest_full_attr,
    keys_with_thresholds,
    missing_schedulers,
    open_ipvs,
    service_full_attr,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import Modprobe
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import normalize_services
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_SERVICE,
    DEL_DEST,
    FWD_MASQ,
    FWD_ROUTE,
    FWD_TUNNEL,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    SVC_F_HASHED,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    Dest,
    Service,
    change_line,
    plan_changes,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="fixtures are little-endian hosts' bytes")


def h(text):
    return bytes.fromhex("".join(text.split()))


# tcp 10.96.0.1:80, rr, not persistent: identity, then every setting NEW/SET_SERVICE needs.
SERVICE_TCP_RR = h("""
    5400 0180
    0600 0100 0200 0000
    0600 0200 0600 0000
    1400 0300 0a600001 00000000 00000000 00000000
    0600 0400 0050 0000
    0700 0600 727200 00
    0c00 0700 00000000 ffffffff
    0800 0800 00000000
    0800 0900 ffffffff
""")

# udp [fd00::1]:53, wrr, persistent 300 s, IPv6 netmask 64 (a prefix length, host order).
SERVICE_UDP6_PERSISTENT = h("""
    5400 0180
    0600 0100 0a00 0000
    0600 0200 1100 0000
    1400 0300 fd000000 00000000 00000000 00000001
    0600 0400 0035 0000
    0800 0600 77727200
    0c00 0700 01000000 ffffffff
    0800 0800 2c010000
    0800 0900 40000000
""")

# 10.0.0.1:8080, masquerading, weight 1, no thresholds, family inet.
DEST_MASQ = h("""
    4800 0280
    1400 0100 0a000001 00000000 00000000 00000000
    0600 0200 1f90 0000
    0800 0300 00000000
    0800 0400 01000000
    0800 0500 00000000
    0800 0600 00000000
    0600 0b00 0200 0000
""")


def test_service_attribute_bytes():
    assert service_full_attr(Service(IPV4, PROTO_TCP, "10.96.0.1", 80)) == SERVICE_TCP_RR
    persistent = Service(IPV6, PROTO_UDP, "fd00::1", 53, scheduler="wrr", flags=SVC_F_PERSISTENT, timeout=300,
                         netmask=64)
    assert service_full_attr(persistent) == SERVICE_UDP6_PERSISTENT


def test_ipv4_netmask_is_big_endian():
    service = Service(IPV4, PROTO_TCP, "10.96.0.1", 80, flags=SVC_F_PERSISTENT, timeout=10, netmask=0xFFFFFF00)
    assert service_full_attr(service).endswith(h("0800 0900 ffffff00"))


def test_dest_attribute_bytes():
    service = Service(IPV4, PROTO_TCP, "10.96.0.1", 80)
    assert dest_full_attr(service, Dest("10.0.0.1", 8080)) == DEST_MASQ


def test_service_round_trip_through_decode():
    # What the kernel sends back: our attributes plus STATS, the HASHED flag set, in another order.
    body = SERVICE_UDP6_PERSISTENT[4:].replace(h("0c00 0700 01000000 ffffffff"), h("0c00 0700 03000000 ffffffff"))
    stats = nl.attr_nested(10, nl.attr_u32(1, 5) + nl.attr_u32(2, 6))
    data = b"junk" + stats + body
    service = decode_service(data, 4, len(data))
    assert service.key == (IPV6, PROTO_UDP, "fd00::1", 53, 0)
    assert (service.scheduler, service.flags, service.timeout, service.netmask) == (
        "wrr", SVC_F_PERSISTENT | SVC_F_HASHED, 300, 64)
    wanted = Service(IPV6, PROTO_UDP, "fd00::1", 53, scheduler="wrr", flags=SVC_F_PERSISTENT, timeout=300,
                     netmask=64)
    assert service.settings() == wanted.settings()


def test_fwmark_service_decode():
    body = (nl.attr_u16(1, socket.AF_INET) + nl.attr_u32(5, 7) + nl.attr_str(6, "sh")
            + nl.attr(7, struct.pack("=II", SVC_F_HASHED | SVC_F_SCHED1 | SVC_F_SCHED2, 0xFFFFFFFF))
            + nl.attr_u32(8, 0) + nl.attr(9, h("ffffffff")))
    service = decode_service(body, 0, len(body))
    assert service.key == (IPV4, 0, "", 0, 7)
    assert service.flags & ~SVC_F_HASHED == SVC_F_SCHED1 | SVC_F_SCHED2


def test_service_without_an_address_is_refused():
    body = nl.attr_u16(1, socket.AF_INET) + nl.attr_u16(2, PROTO_TCP) + nl.attr_str(6, "rr")
    with pytest.raises(KubeIpvsError, match="without its family or address"):
        decode_service(body, 0, len(body))


def test_dest_decode_skips_stats_and_reads_counters():
    kernel_extra = (nl.attr_u32(7, 4) + nl.attr_u32(8, 9) + nl.attr_u32(9, 1)
                    + nl.attr_nested(10, nl.attr_u32(1, 123)) + nl.attr(13, b"\x00") + nl.attr_be16(14, 0))
    payload = DEST_MASQ[4:] + kernel_extra
    dest = decode_dest(payload, 0, len(payload), IPV4, {})
    assert (dest.address, dest.port, dest.forwarding, dest.weight, dest.u_threshold, dest.l_threshold) == (
        "10.0.0.1", 8080, FWD_MASQ, 1, 0, 0)
    assert (dest.active, dest.inactive) == (4, 9)


def test_ipv6_dest_uses_its_address_family_attribute():
    payload = (nl.attr(1, socket.inet_pton(socket.AF_INET6, "fd00::10")) + nl.attr_be16(2, 8443)
               + nl.attr_u32(3, FWD_TUNNEL) + nl.attr_u32(4, 3) + nl.attr_u16(11, socket.AF_INET6))
    dest = decode_dest(payload, 0, len(payload), IPV4, {})
    assert (dest.address, dest.port, dest.forwarding, dest.weight) == ("fd00::10", 8443, FWD_TUNNEL, 3)


def test_encoder_messages():
    encoder = ChangeEncoder(33)
    service = Service(IPV4, PROTO_TCP, "10.96.0.1", 80)
    payload = encoder.payload((ADD_SERVICE, service, None))
    assert payload[:4] == bytes([IPVS_CMD_NEW_SERVICE, 1, 0, 0])
    assert payload[4:] == SERVICE_TCP_RR
    payload = encoder.payload((DEL_DEST, service, Dest("10.0.0.1", 8080)))
    assert payload[0] == IPVS_CMD_DEL_DEST
    top = nl.parse_attrs(payload, 4)
    assert set(top) == {IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST}
    offset, length = top[IPVS_CMD_ATTR_DEST]
    dest_attrs = nl.parse_attrs(payload, offset, offset + length)
    assert set(dest_attrs) == {1, 2, 11}  # a delete names the real server only
    assert encoder.request((DEL_DEST, service, Dest("10.0.0.1", 8080)))[1:3] == (33, 0)


# --- /proc/net/ip_vs --------------------------------------------------------------------------

# Captured from Debian's 6.1 kernel in the lab (ipvsadm-made services).
PROC_TEXT = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
UDP  0A60000A:0035 wrr  persistent 2700000 FFFFFFFF
  -> 0AF40102:0035      Tunnel  3      0          0         
TCP  [fd00:0010:0096:0000:0000:0000:0000:0001]:0050 sh 
  -> [fd00:0010:0244:0000:0000:0000:0000:0005]:1F90      Masq    1      2          7         
SCTP  0A600014:270F lc  
TCP  0A600001:01BB rr  
  -> C0A8010B:01BB      Route   0      0          0         
  -> C0A8010A:192B      Masq    1      0          0         
FWM  00000007 rr 
  -> 0A000009:0000      Route   1      0          0         
"""  # noqa: W291 - the kernel's trailing blanks


def test_parse_proc_ip_vs():
    proc = ProcTable(PROC_TEXT)
    table = {key: proc.real_servers(key) for key in proc}
    assert set(table) == {
        (IPV4, PROTO_UDP, "10.96.0.10", 53, 0),
        (IPV6, PROTO_TCP, "fd00:10:96::1", 80, 0),
        (IPV4, PROTO_SCTP, "10.96.0.20", 9999, 0),
        (IPV4, PROTO_TCP, "10.96.0.1", 443, 0),
    }  # the fwmark service is skipped: /proc does not say its family
    https = table[(IPV4, PROTO_TCP, "10.96.0.1", 443, 0)]
    assert sorted((d.address, d.port, d.forwarding, d.weight) for d in https.values()) == [
        ("192.168.1.10", 6443, FWD_MASQ, 1), ("192.168.1.11", 443, FWD_ROUTE, 0)]
    v6 = table[(IPV6, PROTO_TCP, "fd00:10:96::1", 80, 0)][("fd00:10:244::5", 8080)]
    assert (v6.active, v6.inactive) == (2, 7)
    assert table[(IPV4, PROTO_UDP, "10.96.0.10", 53, 0)][("10.244.1.2", 53)].forwarding == FWD_TUNNEL
    assert table[(IPV4, PROTO_SCTP, "10.96.0.20", 9999, 0)] == {}


PROC_FORWARDING_WORDS = {FWD_MASQ: "Masq", FWD_TUNNEL: "Tunnel", FWD_ROUTE: "Route"}


def proc_dest_line(family, dest):
    """A real server's line as ip_vs_info_seq_show() prints it (6.1: "  -> %08X:%04X      %-7s
    %-6d %-10d %-10d", IPv6 addresses as [%pI6], four hex digits per group)."""
    if family == IPV6:
        digits = socket.inet_pton(socket.AF_INET6, dest.address).hex()
        host = "[" + ":".join(digits[at:at + 4] for at in range(0, 32, 4)) + "]"
    else:
        host = socket.inet_aton(dest.address).hex().upper()
    return (f"  -> {host}:{dest.port:04X}      {PROC_FORWARDING_WORDS[dest.forwarding]:<7} {dest.weight:<6} "
            f"{dest.active:<10} {dest.inactive:<10}")


def proc_text(services):
    lines = PROC_TEXT.splitlines()[:3]
    for service in services:
        host = (f"[{proc_dest_line(IPV6, Dest(service.address, 0)).split('[')[1].split(']')[0]}]"
                if service.family == IPV6 else socket.inet_aton(service.address).hex().upper())
        lines.append(f"{'TCP' if service.protocol == PROTO_TCP else 'UDP'}  {host}:{service.port:04X} rr  ")
        lines += [proc_dest_line(service.family, dest) for dest in service.dests.values()]
    return "\n".join(lines) + "\n"


def test_proc_dest_line_is_the_kernels_format():
    proc = ProcTable(PROC_TEXT)
    rendered = {proc_dest_line(key[0], dest) for key in proc for dest in proc.real_servers(key).values()}
    captured = {line for line in PROC_TEXT.splitlines() if line.startswith("  -> ") and "Remote" not in line}
    assert rendered == captured - {"  -> 0A000009:0000      Route   1      0          0         "}  # the FWM one


def test_proc_dests_match_without_decoding():
    proc = ProcTable(PROC_TEXT)
    same = {("192.168.1.10", 6443): Dest("192.168.1.10", 6443, FWD_MASQ, 1),
            ("192.168.1.11", 443): Dest("192.168.1.11", 443, FWD_ROUTE, 0)}
    assert proc.real_servers((IPV4, PROTO_TCP, "10.96.0.1", 443, 0), same) is same  # nothing decoded
    v6 = {("fd00:10:244::5", 8080): Dest("fd00:10:244::5", 8080, FWD_MASQ, 1)}
    assert proc.real_servers((IPV6, PROTO_TCP, "fd00:10:96::1", 80, 0), v6) is v6
    none = {}
    assert proc.real_servers((IPV4, PROTO_SCTP, "10.96.0.20", 9999, 0), none) is none


@pytest.mark.parametrize("change", [
    {"weight": 2}, {"forwarding": FWD_TUNNEL}, {"port": 6444}, {"address": "192.168.1.12"},
    {"u_threshold": 10}, {"l_threshold": 1}, {"weight": 10_000_000},
])
def test_proc_dests_do_not_vouch_for_a_difference(change):
    proc = ProcTable(PROC_TEXT)
    key = (IPV4, PROTO_TCP, "10.96.0.1", 443, 0)
    first = Dest("192.168.1.10", 6443, FWD_MASQ, 1).copy(**change)
    desired = {first.key: first, ("192.168.1.11", 443): Dest("192.168.1.11", 443, FWD_ROUTE, 0)}
    decoded = proc.real_servers(key, desired)
    assert decoded is not desired
    assert {dest.key: dest.settings() for dest in decoded.values()} == {
        ("192.168.1.10", 6443): (FWD_MASQ, 1, 0, 0), ("192.168.1.11", 443): (FWD_ROUTE, 0, 0, 0)}


def test_proc_dests_count_must_match():
    proc = ProcTable(PROC_TEXT)
    key = (IPV4, PROTO_TCP, "10.96.0.1", 443, 0)
    fewer = {("192.168.1.10", 6443): Dest("192.168.1.10", 6443, FWD_MASQ, 1)}
    https = proc.real_servers(key, fewer)
    assert https is not fewer
    assert len(https) == 2
    assert sorted(https) == [("192.168.1.10", 6443), ("192.168.1.11", 443)]  # decoded
    none = {}
    assert proc.real_servers(key, none) is not none


def random_table(rng, family):
    services = []
    for index in range(30):
        address = f"fd00:10:96::{index + 1:x}" if family == IPV6 else f"10.96.0.{index + 1}"
        service = Service(family, rng.choice((PROTO_TCP, PROTO_UDP)), address, rng.choice((53, 80, 443)))
        for _slot in range(rng.randrange(0, 6)):
            number = rng.randrange(1, 40)
            host = f"fd00:10:244::{number:x}" if family == IPV6 else f"10.244.0.{number}"
            dest = Dest(host, rng.choice((53, 8080)), rng.choice((FWD_MASQ, FWD_ROUTE, FWD_TUNNEL)),
                        rng.choice((0, 1, 1, 5)), active=rng.choice((0, 0, 3)), inactive=rng.choice((0, 2)))
            service.dests[dest.key] = dest
        if service.key not in {other.key for other in services}:
            services.append(service)
    return services


def mutated(rng, services):
    desired = []
    for service in services:
        clone = service.copy_without_dests()
        clone.dests = {key: dest.copy(active=0, inactive=0) for key, dest in service.dests.items()}
        roll = rng.random()
        dests = list(clone.dests.values())
        if roll < 0.1 and dests:
            dests[0].weight += 1
        elif roll < 0.2 and dests:
            del clone.dests[dests[0].key]
        elif roll < 0.3:
            extra = dests[0].copy(port=9999) if dests else Dest(clone.address, 9999)
            clone.dests[extra.key] = extra
        elif roll < 0.35 and dests:
            dests[-1].forwarding = FWD_TUNNEL if dests[-1].forwarding != FWD_TUNNEL else FWD_MASQ
        elif roll < 0.4 and dests:
            dests[0].u_threshold = 100
        desired.append(clone)
    return desired


@pytest.mark.parametrize("seed", range(20))
def test_planning_from_proc_equals_planning_from_decoded_real_servers(seed):
    """The shortcut may only skip work: every plan equals the one from plain, decoded tables."""
    rng = random.Random(seed)
    family = IPV6 if seed % 4 == 3 else IPV4
    current = random_table(rng, family)
    desired = mutated(rng, current)
    plain = {service.key: service for service in current}
    expected = {service.key: service for service in desired}
    proc = ProcTable(proc_text(current))
    from_proc = {}
    for key in proc:
        service = plain[key].copy_without_dests()
        service.dests = proc.real_servers(key, expected[key].dests)
        from_proc[key] = service
    assert set(from_proc) == set(plain)
    expected = plan_changes(desired, plain, drain_timeout=None)
    got = plan_changes(desired, from_proc, drain_timeout=None)
    assert [change_line(change) for change in got.ordered()] == [change_line(c) for c in expected.ordered()]
    assert (got.draining, got.drain_state) == (expected.draining, expected.drain_state)
    for service in desired:  # and the unchanged services were never decoded
        same = {key: dest.settings() for key, dest in service.dests.items()} == {
            key: dest.settings() for key, dest in plain[service.key].dests.items()}
        assert (from_proc[service.key].dests is service.dests) == same


# --- what is read by netlink, and the modules ------------------------------------------------


def test_keys_with_thresholds():
    desired, _absent = normalize_services([
        {"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "upper_threshold": 3}]},
        {"address": "10.96.0.2", "port": 80, "real_servers": [{"address": "10.0.0.1"}]},
    ])
    assert keys_with_thresholds(desired) == {desired[0].key}


def test_missing_schedulers(tmp_path):
    (tmp_path / "ip_vs_rr").mkdir()
    calls = []

    def run_command(argv):
        calls.append(argv)
        return (0, "", "") if argv[-1] == "ip_vs_wrr" else (1, "", "modprobe: FATAL: Module not found")

    modprobe = Modprobe(run_command, "/sbin/modprobe")
    assert missing_schedulers(["rr", "wrr", "twos", "rr"], modprobe, False, str(tmp_path)) == ["twos"]
    assert calls == [["/sbin/modprobe", "--", "ip_vs_twos"], ["/sbin/modprobe", "--", "ip_vs_wrr"]]
    calls.clear()
    assert missing_schedulers(["wrr"], modprobe, True, str(tmp_path)) == []
    assert calls == [["/sbin/modprobe", "-n", "--", "ip_vs_wrr"]]  # check mode only looks


def test_modprobe_stderr_decides_too_and_a_missing_tool_is_named():
    modprobe = Modprobe(lambda argv: (0, "", "modprobe: ERROR: could not insert 'ip_vs_twos'"), "/sbin/modprobe")
    assert missing_schedulers(["twos"], modprobe, False, "/nonexistent") == ["twos"]
    with pytest.raises(KubeIpvsError, match="modprobe is not installed"):
        missing_schedulers(["twos"], Modprobe(lambda argv: (0, "", ""), None), False, "/nonexistent")


def test_open_ipvs_in_check_mode_without_ip_vs_reads_an_empty_table(tmp_path):
    calls = []
    modprobe = Modprobe(lambda argv: calls.append(argv) or (0, "", ""), "/sbin/modprobe")
    kernel = open_ipvs(modprobe, True, ["wrr"], proc_path=str(tmp_path / "ip_vs"))
    assert kernel.read() == {} and kernel.get_timeouts() == {}
    assert calls == [["/sbin/modprobe", "-n", "--", "ip_vs"]]
    missing = Modprobe(lambda argv: (1, "", "modprobe: FATAL: Module ip_vs not found"), "/sbin/modprobe")
    with pytest.raises(KubeIpvsError, match="this kernel has no ip_vs module: modprobe: FATAL"):
        open_ipvs(missing, True, [], proc_path=str(tmp_path / "ip_vs"))
    with pytest.raises(KubeIpvsError, match="cannot load the ip_vs kernel module"):
        open_ipvs(missing, False, [], proc_path=str(tmp_path / "ip_vs"))


# --- netlink batching against a scripted socket -----------------------------------------------


class ScriptedKernel:
    """Answers like the kernel: handles a whole send() at once; errors always, ACKs on request."""

    def __init__(self, fail=(), dump_rows=None):
        self.fail = dict(fail)  # message index (0-based, over all sends) -> errno
        self.dump_rows = dump_rows or {}
        self.sends = []
        self.queue = []
        self.index = 0

    def send(self, data):
        messages = list(nl.iter_messages(data))
        self.sends.append(messages)
        for msg_type, flags, seq, _start, _end in messages:
            code = self.fail.get(self.index, 0)
            self.index += 1
            if flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP:
                if code:
                    self.queue.append(self._error(seq, code))
                    continue
                for row in self.dump_rows.get(seq, []):
                    self.queue.append(nl.message(msg_type, nl.NLM_F_MULTI, seq, row))
                self.queue.append(nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, b"\0\0\0\0"))
            elif code or flags & nl.NLM_F_ACK:
                self.queue.append(self._error(seq, code))
        return len(data)

    @staticmethod
    def _error(seq, code):
        return nl.message(nl.NLMSG_ERROR, 0, seq, struct.pack("=i", -code) + b"\0" * 16)

    def recv(self, size):
        return self.queue.pop(0)


def scripted_socket(kernel, batch_bytes=nl.DEFAULT_BATCH_BYTES):
    sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
    sock.sock, sock.seq, sock.batch_bytes = kernel, 0, batch_bytes
    return sock


def test_transact_batches_and_maps_errors_to_their_request():
    kernel = ScriptedKernel(fail={1: errno.EEXIST, 4: errno.ENOENT})
    sock = scripted_socket(kernel, batch_bytes=3 * (16 + 8))
    requests = [(f"change{i}", 33, 0, b"\x01\x01\x00\x00abcd") for i in range(5)]
    failures = sock.transact(requests)
    assert failures == [("change1", errno.EEXIST), ("change4", errno.ENOENT)]
    assert [len(batch) for batch in kernel.sends] == [3, 2]
    # Only the last message of each batch asks for an ACK.
    assert [[bool(flags & nl.NLM_F_ACK) for _t, flags, _s, _a, _b in batch] for batch in kernel.sends] == [
        [False, False, True], [False, True]]
    assert all(flags & nl.NLM_F_REQUEST for batch in kernel.sends for _t, flags, _s, _a, _b in batch)


def test_transact_when_the_last_message_fails():
    kernel = ScriptedKernel(fail={2: errno.EINVAL})
    failures = scripted_socket(kernel).transact([(i, 33, 0, b"\0" * 4) for i in range(3)])
    assert failures == [(2, errno.EINVAL)]


def test_dump_many_collects_rows_and_retries_busy():
    kernel = ScriptedKernel(fail={1: errno.EBUSY}, dump_rows={1: [b"row-a"], 2: [b"row-b", b"row-c"]})
    sock = scripted_socket(kernel)
    requests = [(seq, nl.message(33, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, b"")) for seq in (1, 2)]
    replies = sock.dump_many(requests, window=2)
    assert [data[start:end] for data, start, end in replies[1]] == [b"row-a"]
    assert [data[start:end] for data, start, end in replies[2]] == [b"row-b", b"row-c"]
    assert len(kernel.sends) == 2  # the busy one went again


def test_dump_many_raises_or_tolerates_errors():
    kernel = ScriptedKernel(fail={0: errno.ESRCH})
    request = [(1, nl.message(33, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1, b""))]
    assert scripted_socket(kernel).dump_many(request, tolerate=(errno.ESRCH,)) == {1: []}
    with pytest.raises(nl.NetlinkError) as caught:
        scripted_socket(ScriptedKernel(fail={0: errno.EPERM})).dump_many(request)
    assert caught.value.code == errno.EPERM


def test_resolve_genl_family():
    reply = nl.GENLMSGHDR.pack(1, 2, 0) + nl.attr_str(nl.CTRL_ATTR_FAMILY_NAME, "IPVS") + nl.attr_u16(
        nl.CTRL_ATTR_FAMILY_ID, 33)

    class Kernel(ScriptedKernel):
        def send(self, data):
            (_t, _f, seq, start, end), = nl.iter_messages(data)
            assert data[start + 4:end] == nl.attr_str(nl.CTRL_ATTR_FAMILY_NAME, "IPVS")
            self.queue += [nl.message(nl.GENL_ID_CTRL, 0, seq, reply), self._error(seq, 0)]
            return len(data)

    assert nl.resolve_genl_family(scripted_socket(Kernel()), "IPVS") == 33

    class Missing(ScriptedKernel):
        def send(self, data):
            (_t, _f, seq, _s, _e), = nl.iter_messages(data)
            self.queue.append(self._error(seq, errno.ENOENT))
            return len(data)

    assert nl.resolve_genl_family(scripted_socket(Missing()), "IPVS") is None
