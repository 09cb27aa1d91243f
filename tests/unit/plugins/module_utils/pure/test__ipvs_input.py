# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS input validation: every bad field named, good input normalised, the fast paths agreeing
with the full validation."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_input import (
    normalize_service,
    normalize_services,
    service_entry,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    FWD_MASQ,
    FWD_ROUTE,
    PROTO_TCP,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
)

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
     "forwarding must be nat, route, tunnel or local"),
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


ROUND_TRIP = [
    {"address": "192.0.2.50", "port": 80, "scheduler": "wlc",
     "real_servers": [{"address": "192.0.2.51", "port": 80},
                      {"address": "192.0.2.52", "port": 8080, "weight": 3, "forwarding": "route"}]},
    {"address": "192.0.2.60", "port": 443, "scheduler": "sh", "scheduler_flags": ["sh-fallback", "sh-port"],
     "persistence_timeout": 300, "netmask": "255.255.255.0", "one_packet": True,
     "real_servers": [{"address": "192.0.2.61", "forwarding": "tunnel", "upper_threshold": 100,
                       "lower_threshold": 10}, {"address": "192.0.2.62", "forwarding": "local"}]},
    {"address": "2001:db8::50", "port": 53, "protocol": "udp", "scheduler": "rr", "persistence_timeout": 60,
     "netmask": 64, "real_servers": [{"address": "2001:db8::51"}]},
    {"fwmark": 7, "family": "inet6", "scheduler": "mh", "scheduler_flags": ["mh-port"],
     "real_servers": [{"address": "2001:db8::9", "weight": 0}]},
    {"address": "192.0.2.70", "port": 8443, "protocol": "sctp"},
]


@pytest.mark.parametrize("entry", ROUND_TRIP)
def test_a_service_written_as_input_reads_back_the_same(entry):
    """What dataplane_facts reports of a foreign service programs exactly that service again."""
    service, _state = normalize_service(entry)
    again, _state = normalize_service(service_entry(service))
    assert again.key == service.key and again.settings() == service.settings()
    assert again.flags == service.flags
    assert {key: (d.forwarding, d.weight, d.u_threshold, d.l_threshold) for key, d in again.dests.items()} == \
           {key: (d.forwarding, d.weight, d.u_threshold, d.l_threshold) for key, d in service.dests.items()}
    assert service_entry(again) == service_entry(service)
