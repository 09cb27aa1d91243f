# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS message encoding/decoding against hand-built bytes, /proc parsing, input validation,
and the netlink batching/ACK logic against a scripted socket."""

from __future__ import annotations

import errno
import gc
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
    collector_paused,
    decode_dest,
    decode_service,
    dest_full_attr,
    keys_with_thresholds,
    load_drain_state,
    missing_schedulers,
    normalize_service,
    normalize_services,
    parse_proc_ip_vs,
    save_drain_state,
    service_full_attr,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
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
    table = parse_proc_ip_vs(PROC_TEXT)
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
    table = parse_proc_ip_vs(PROC_TEXT)
    rendered = {proc_dest_line(key[0], dest) for key, dests in table.items() for dest in dests.values()}
    captured = {line for line in PROC_TEXT.splitlines() if line.startswith("  -> ") and "Remote" not in line}
    assert rendered == captured - {"  -> 0A000009:0000      Route   1      0          0         "}  # the FWM one


def test_proc_dests_match_without_decoding():
    table = parse_proc_ip_vs(PROC_TEXT)
    https = table[(IPV4, PROTO_TCP, "10.96.0.1", 443, 0)]
    same = {("192.168.1.10", 6443): Dest("192.168.1.10", 6443, FWD_MASQ, 1),
            ("192.168.1.11", 443): Dest("192.168.1.11", 443, FWD_ROUTE, 0)}
    assert https.matches(same)
    assert https._dests is None  # nothing decoded
    v6 = table[(IPV6, PROTO_TCP, "fd00:10:96::1", 80, 0)]
    assert v6.matches({("fd00:10:244::5", 8080): Dest("fd00:10:244::5", 8080, FWD_MASQ, 1)})
    assert table[(IPV4, PROTO_SCTP, "10.96.0.20", 9999, 0)].matches({})


@pytest.mark.parametrize("change", [
    {"weight": 2}, {"forwarding": FWD_TUNNEL}, {"port": 6444}, {"address": "192.168.1.12"},
    {"u_threshold": 10}, {"l_threshold": 1}, {"weight": 10_000_000},
])
def test_proc_dests_do_not_vouch_for_a_difference(change):
    https = parse_proc_ip_vs(PROC_TEXT)[(IPV4, PROTO_TCP, "10.96.0.1", 443, 0)]
    first = Dest("192.168.1.10", 6443, FWD_MASQ, 1).copy(**change)
    desired = {first.key: first, ("192.168.1.11", 443): Dest("192.168.1.11", 443, FWD_ROUTE, 0)}
    assert not https.matches(desired)


def test_proc_dests_count_must_match():
    https = parse_proc_ip_vs(PROC_TEXT)[(IPV4, PROTO_TCP, "10.96.0.1", 443, 0)]
    assert not https.matches({("192.168.1.10", 6443): Dest("192.168.1.10", 6443, FWD_MASQ, 1)})
    assert len(https) == 2
    assert sorted(https) == [("192.168.1.10", 6443), ("192.168.1.11", 443)]  # decoded on use
    assert not https.matches({})  # decoded: the full comparison decides from now on


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
    from_proc = {}
    for key, dests in parse_proc_ip_vs(proc_text(current)).items():
        service = plain[key].copy_without_dests()
        service.dests = dests
        from_proc[key] = service
    assert set(from_proc) == set(plain)
    expected = plan_changes(desired, plain, drain_timeout=None)
    got = plan_changes(desired, from_proc, drain_timeout=None)
    assert [change_line(change) for change in got.ordered()] == [change_line(c) for c in expected.ordered()]
    assert (got.draining, got.drain_state) == (expected.draining, expected.drain_state)
    for service in desired:  # and the unchanged services were never decoded
        same = {key: dest.settings() for key, dest in service.dests.items()} == {
            key: dest.settings() for key, dest in plain[service.key].dests.items()}
        assert (from_proc[service.key].dests._dests is None) == same


# --- input validation -------------------------------------------------------------------------

BAD_SERVICES = [
    ({"address": "10.96.0.300", "port": 80}, "not an IPv4 or IPv6 address"),
    ({"address": "10.96.0.0/24", "port": 80}, "not a host address"),
    ({"address": "10.96.0.1", "port": 0}, "port must be between 1 and 65535"),
    ({"address": "10.96.0.1", "port": 65536}, "port must be between 1 and 65535"),
    ({"address": "10.96.0.1", "port": "http"}, "port must be an integer"),
    ({"address": "10.96.0.1"}, "port is required"),
    ({"address": "10.96.0.1", "port": 80, "scheduler": "fastest"}, "unknown scheduler 'fastest'"),
    ({"address": "10.96.0.1", "port": 80, "protocol": "icmp"}, "protocol must be one of"),
    ({"fwmark": 7, "port": 80}, "a fwmark service has no port"),
    ({"fwmark": 0}, "fwmark must be between 1"),
    ({"address": "10.96.0.1", "port": 80, "family": "inet6"}, "not an IPv6 address"),
    ({"address": "10.96.0.1", "port": 80, "scheduler": "rr", "scheduler_flags": ["sh-port"]},
     "only applies to the sh scheduler"),
    ({"address": "10.96.0.1", "port": 80, "scheduler_flags": ["turbo"]}, "unknown scheduler flag"),
    ({"address": "10.96.0.1", "port": 80, "netmask": "255.0.255.0"}, "not contiguous"),
    ({"address": "fd00::1", "port": 80, "netmask": "200"}, "prefix length 1-128"),
    ({"address": "10.96.0.1", "port": 80, "persistence_timeout": -1}, "persistence_timeout must be between"),
    ({"address": "10.96.0.1", "port": 80, "colour": "red"}, "unknown keys colour"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "fd00::1"}]}, "not an IPv4 address"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "weight": -1}]},
     "weight must be between 0 and 65535"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "port": 0}]},
     "port must be between 1 and 65535"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "forwarding": "dr"}]},
     "forwarding must be nat, route or tunnel"),
    ({"address": "10.96.0.1", "port": 80,
      "real_servers": [{"address": "10.0.0.1", "upper_threshold": 5, "lower_threshold": 9}]},
     "lower_threshold (9) must not exceed upper_threshold (5)"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1"}, {"address": "10.0.0.1"}]},
     "listed twice"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"port": 80}]}, "address is required"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "wieght": 2}]},
     "unknown key(s) wieght"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": ["10.0.0.1"]}]}, "not an IPv4 address"),
    ({"address": ["10.96.0.1"], "port": 80}, "not an IPv4 or IPv6 address"),
    ({"address": "10.96.0.1", "port": True}, "port must be an integer"),
    ({"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "weight": True}]},
     "weight must be an integer"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_SERVICES)
def test_bad_service_input(entry, message):
    with pytest.raises(KubeIpvsError) as caught:
        normalize_service(entry, "services[3]")
    assert message in caught.value.msg
    assert caught.value.msg.startswith("services[3]")


def test_good_service_input_is_normalised():
    service, state = normalize_service({
        "address": "10.96.0.1/32", "port": 80, "scheduler": "sh", "scheduler_flags": ["sh-fallback", "sh-port"],
        "persistence_timeout": 60, "netmask": 24,
        "real_servers": [{"address": "10.0.0.1"}, {"address": "10.0.0.2", "port": 8080, "weight": 0,
                                                   "forwarding": "route", "upper_threshold": 10,
                                                   "lower_threshold": 2}]})
    assert state == "present"
    assert service.key == (IPV4, PROTO_TCP, "10.96.0.1", 80, 0)
    assert service.flags == SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2
    assert (service.timeout, service.netmask) == (60, 0xFFFFFF00)
    assert service.dests[("10.0.0.1", 80)].settings() == (FWD_MASQ, 1, 0, 0)  # port defaults to the service's
    assert service.dests[("10.0.0.2", 8080)].settings() == (FWD_ROUTE, 0, 10, 2)


def test_ipv6_and_fwmark_input():
    service, _state = normalize_service({"address": "FD00:0:0::1", "port": 443,
                                         "real_servers": [{"address": "fd00:0::10"}]})
    assert service.key == (IPV6, PROTO_TCP, "fd00::1", 443, 0)
    assert list(service.dests) == [("fd00::10", 443)]
    assert service.netmask == 128
    mark, _state = normalize_service({"fwmark": 9, "family": "inet6", "real_servers": [{"address": "fd00::12"}]})
    assert mark.key == (IPV6, 0, "", 0, 9)
    assert list(mark.dests) == [("fd00::12", 0)]


def test_duplicate_services_are_refused():
    entries = [{"address": "10.96.0.1", "port": 80}, {"address": "10.96.0.2", "port": 80},
               {"address": "10.96.0.1", "port": 80, "scheduler": "wrr"}]
    with pytest.raises(KubeIpvsError, match=r"services\[2\]: duplicate of services\[0\]"):
        normalize_services(entries)


def test_normalize_services_splits_absent_and_shares_no_cache_across_families():
    desired, absent = normalize_services([
        {"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1"}]},
        {"address": "10.96.0.2", "port": 80, "state": "absent"},
        {"address": "fd00::1", "port": 80, "real_servers": [{"address": "fd00::2"}]},
    ])
    assert [service.address for service in desired] == ["10.96.0.1", "fd00::1"]
    assert [service.address for service in absent] == ["10.96.0.2"]
    with pytest.raises(KubeIpvsError, match="not an IPv6 address"):
        normalize_services([{"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1"}]},
                            {"address": "fd00::1", "port": 80, "real_servers": [{"address": "10.0.0.1"}]}])


@pytest.mark.parametrize("plain, spelled_out", [
    ({"address": "10.0.0.1", "port": 8080},
     {"address": "10.0.0.1", "port": "8080", "forwarding": "nat", "weight": 1, "upper_threshold": 0}),
    ({"address": "10.0.0.1", "weight": 0}, {"address": "10.0.0.1/32", "port": 80, "weight": "0"}),
    ({"address": "fd00::2", "port": 53}, {"address": "fd00:0::2", "port": 53, "weight": 1}),
])
def test_real_servers_in_plain_and_spelled_out_form_agree(plain, spelled_out):
    """The fast path for {address, port, weight} and the full validation build the same Dest."""
    family_vip = "fd00::1" if ":" in plain["address"] else "10.96.0.1"

    def dest_of(server):
        service, _state = normalize_service({"address": family_vip, "port": 80, "real_servers": [server]})
        (dest,) = service.dests.values()
        return (dest.address, dest.port, dest.settings())

    assert dest_of(plain) == dest_of(spelled_out)


@pytest.mark.parametrize("server, message", [
    ({"address": "10.0.0.1", "port": True}, "port must be an integer"),
    ({"address": "10.0.0.1", "port": 0}, "port must be between 1 and 65535"),
    ({"address": "10.0.0.1", "weight": 65536}, "weight must be between 0 and 65535"),
    ({"address": "010.0.0.1"}, "not an IPv4 address"),
    ({"address": "10.0.0.1", "colour": "red"}, "unknown key"),
])
def test_real_servers_the_fast_path_passes_on_are_still_refused(server, message):
    with pytest.raises(KubeIpvsError, match=message):
        normalize_services([{"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1"}, server]}])


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
        return (0 if argv[-1] == "ip_vs_wrr" else 1), "", "modprobe: FATAL: Module not found"

    assert missing_schedulers(["rr", "wrr", "twos", "rr"], run_command, False, str(tmp_path)) == ["twos"]
    assert calls == [["modprobe", "ip_vs_twos"], ["modprobe", "ip_vs_wrr"]]
    calls.clear()
    assert missing_schedulers(["wrr"], run_command, True, str(tmp_path)) == []
    assert calls == [["modprobe", "-n", "ip_vs_wrr"]]  # check mode only looks


def test_drain_state_round_trip(tmp_path):
    path = str(tmp_path / "run/kubeipvs/ipvs-drain.json")
    assert load_drain_state(path) == {}
    save_drain_state({"tcp/10.96.0.1:80": {"10.0.0.2:8080": 12.5}}, path)
    assert load_drain_state(path) == {"tcp/10.96.0.1:80": {"10.0.0.2:8080": 12.5}}
    (tmp_path / "run/kubeipvs/ipvs-drain.json").write_text("{broken")
    assert load_drain_state(path) == {}


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


def test_collector_paused_turns_the_collector_back_on_even_after_an_error():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KubeIpvsError), collector_paused():
        raise KubeIpvsError("failed mid-run")
    assert gc.isenabled()


def test_collector_paused_leaves_a_collector_that_was_off_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
