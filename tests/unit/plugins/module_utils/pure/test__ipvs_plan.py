# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure IPVS planner: table-driven cases from (desired, current, scope) to change lists."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_DEST,
    ADD_SERVICE,
    DEL_DEST,
    DEL_SERVICE,
    FWD_MASQ,
    FWD_ROUTE,
    PROTO_TCP,
    PROTO_UDP,
    SET_SERVICE,
    SVC_F_HASHED,
    SVC_F_PERSISTENT,
    SVC_F_SCHED2,
    Dest,
    Scope,
    Service,
    change_line,
    merge_drain_state,
    plan_changes,
    result_counts,
    scope_settings,
    simulate,
    summarize,
)


def svc(address="10.96.0.1", port=80, protocol=PROTO_TCP, dests=(), family=IPV4, **kwargs):
    service = Service(family, protocol, address, port, **kwargs)
    for dest in dests:
        service.dests[dest.key] = dest
    return service


def fw(mark, dests=(), family=IPV4, **kwargs):
    service = Service(family, fwmark=mark, **kwargs)
    for dest in dests:
        service.dests[dest.key] = dest
    return service


def d(address, port=8080, weight=1, **kwargs):
    return Dest(address, port, weight=weight, **kwargs)


def table(*services):
    """The kernel's view: what it reads back always carries the HASHED bit."""
    result = {}
    for service in services:
        clone = simulate({}, [(ADD_SERVICE, service, None)])[service.key]
        clone.flags |= SVC_F_HASHED
        clone.dests = {key: dest.copy() for key, dest in service.dests.items()}
        result[service.key] = clone
    return result


def lines(plan):
    return [change_line(change) for change in plan.ordered()]


CASES = [
    pytest.param(
        [svc(dests=[d("10.0.0.1"), d("10.0.0.2")])], table(), {},
        ["-A -t 10.96.0.1:80 -s rr", "-a -t 10.96.0.1:80 -r 10.0.0.1:8080 -m -w 1",
         "-a -t 10.96.0.1:80 -r 10.0.0.2:8080 -m -w 1"],
        id="add-from-empty"),
    pytest.param(
        [svc(dests=[d("10.0.0.1")])], table(svc(dests=[d("10.0.0.1")])), {},
        [], id="no-op-despite-hashed-flag"),
    pytest.param(
        [svc(scheduler="wrr", dests=[d("10.0.0.1", weight=5)])], table(svc(dests=[d("10.0.0.1")])), {},
        ["-E -t 10.96.0.1:80 -s wrr", "-e -t 10.96.0.1:80 -r 10.0.0.1:8080 -m -w 5"],
        id="update-in-place-scheduler-and-weight"),
    pytest.param(
        [svc(dests=[d("10.0.0.1", forwarding=FWD_ROUTE, u_threshold=9, l_threshold=3)])],
        table(svc(dests=[d("10.0.0.1")])), {},
        ["-e -t 10.96.0.1:80 -r 10.0.0.1:8080 -g -w 1 -x 9 -y 3"],
        id="update-forwarding-and-thresholds"),
    pytest.param(
        [svc(flags=SVC_F_PERSISTENT, timeout=300)], table(svc()), {},
        ["-E -t 10.96.0.1:80 -s rr -p 300"], id="persistence-added"),
    pytest.param(
        [svc(flags=SVC_F_PERSISTENT, timeout=300)], table(svc(flags=SVC_F_PERSISTENT, timeout=300)), {},
        [], id="persistence-unchanged"),
    pytest.param(
        [svc()], table(svc(timeout=77, netmask=0xFFFFFF00)), {},
        [], id="timeout-and-netmask-ignored-without-persistence"),
    pytest.param(
        [svc(flags=SVC_F_PERSISTENT, timeout=300, netmask=0xFFFFFF00)],
        table(svc(flags=SVC_F_PERSISTENT, timeout=300)), {},
        ["-E -t 10.96.0.1:80 -s rr -p 300 -M 255.255.255.0"], id="persistence-netmask"),
    pytest.param(
        [svc(dests=[d("10.0.0.1")])], table(svc(dests=[d("10.0.0.1"), d("10.0.0.2")])), {},
        ["-d -t 10.96.0.1:80 -r 10.0.0.2:8080"], id="purge-idle-real-server"),
    pytest.param(
        [svc(dests=[d("10.0.0.1")], purge=False)], table(svc(dests=[d("10.0.0.1"), d("10.0.0.2")])), {},
        [], id="no-purge-keeps-extra-real-server"),
    pytest.param(
        [svc(scheduler="sh", flags=SVC_F_SCHED2)], table(svc(scheduler="sh")), {},
        ["-E -t 10.96.0.1:80 -s sh -b flag-2"], id="scheduler-flag"),
    pytest.param(
        [fw(7, dests=[d("10.0.0.9", port=0)])], table(), {},
        ["-A -f 7 -s rr", "-a -f 7 -r 10.0.0.9:0 -m -w 1"], id="fwmark-add"),
    pytest.param(
        [svc("fd00::1", 443, family=IPV6, dests=[d("fd00::10", 8443)])], table(), {},
        ["-A -t [fd00::1]:443 -s rr", "-a -t [fd00::1]:443 -r [fd00::10]:8443 -m -w 1"], id="ipv6-add"),
    pytest.param(
        [fw(9, family=IPV6, flags=SVC_F_PERSISTENT, timeout=60, netmask=64)],
        table(fw(9, family=IPV6, flags=SVC_F_PERSISTENT, timeout=60, netmask=128)), {},
        ["-E -f 9 -6 -s rr -p 60 -M 64"], id="ipv6-fwmark-netmask"),
    pytest.param(
        [svc("10.96.0.1", 53, protocol=PROTO_UDP)], table(svc("10.96.0.1", 53, protocol=PROTO_TCP)), {},
        ["-A -u 10.96.0.1:53 -s rr"], id="protocol-is-part-of-the-key"),
]


@pytest.mark.parametrize(("desired", "current", "options", "expected"), CASES)
def test_plan(desired, current, options, expected):
    plan = plan_changes(desired, current, **options)
    assert lines(plan) == expected
    # Applying the plan to the table gives a table the planner has nothing more to do for.
    after = simulate(current, plan.ordered())
    assert lines(plan_changes(desired, after, **options)) == []


def test_changes_are_ordered_deletions_first():
    current = table(svc("10.96.0.9", dests=[d("10.0.0.1")]), svc("10.96.0.1", dests=[d("10.0.0.5")]))
    desired = [svc("10.96.0.1", scheduler="lc", dests=[d("10.0.0.6")]), svc("10.96.0.2", dests=[d("10.0.0.7")])]
    plan = plan_changes(desired, current, Scope(cidrs=["10.96.0.0/12"]), exclusive=True)
    assert [op for op, _s, _d in plan.ordered()] == [DEL_DEST, DEL_SERVICE, SET_SERVICE, ADD_SERVICE, ADD_DEST,
                                                     ADD_DEST]


SCOPE_CASES = [
    pytest.param(Scope(cidrs=["10.96.0.0/12"]), ["-D -t 10.96.0.2:80"], id="cidr"),
    pytest.param(Scope(addresses=["10.96.0.2"]), ["-D -t 10.96.0.2:80"], id="addresses-on-the-dummy-link"),
    pytest.param(Scope(cidrs=["10.96.0.0/12"], fwmarks=[7]), ["-D -t 10.96.0.2:80", "-D -f 7"], id="fwmarks"),
    pytest.param(Scope(cidrs=["fd00::/64"]), ["-D -t [fd00::2]:80"], id="ipv6-cidr"),
    pytest.param(Scope(), [], id="empty-scope-owns-nothing"),
]


@pytest.mark.parametrize(("scope", "expected"), SCOPE_CASES)
def test_exclusive_deletes_only_inside_scope(scope, expected):
    current = table(svc("10.96.0.1"), svc("10.96.0.2"), svc("192.0.2.50"), fw(7), fw(8),
                    svc("fd00::2", family=IPV6))
    plan = plan_changes([svc("10.96.0.1")], current, scope, exclusive=True)
    assert sorted(lines(plan)) == sorted(expected)


def test_not_exclusive_deletes_nothing():
    current = table(svc("10.96.0.1"), svc("10.96.0.2"))
    assert lines(plan_changes([svc("10.96.0.1")], current, Scope(cidrs=["10.0.0.0/8"]), exclusive=False)) == []


def test_absent_deletes_the_named_service_only_when_present():
    current = table(svc("10.96.0.1"), svc("10.96.0.2"))
    assert lines(plan_changes([], current, absent=[svc("10.96.0.2").key, svc("10.96.0.3").key])) == [
        "-D -t 10.96.0.2:80"]


def test_scope_contains():
    scope = Scope(cidrs=["10.96.0.0/12", "fd00:10:96::/112"], addresses=["192.0.2.1"], fwmarks=[5])
    assert scope.contains(svc("10.111.255.255"))
    assert not scope.contains(svc("10.112.0.0"))
    assert scope.contains(svc("192.0.2.1"))
    assert not scope.contains(svc("192.0.2.2"))
    assert scope.contains(svc("fd00:10:96::ffff", family=IPV6))
    assert not scope.contains(svc("fd00:10:97::1", family=IPV6))
    assert scope.contains(fw(5)) and not scope.contains(fw(6))


def test_node_addresses_are_owned_only_on_the_node_port_range():
    """kube-proxy owns only its NodePorts on a node's own addresses: keepalived on <node IP>:8443 is
    not kube-proxy's, and neither is a service on another address in the range."""
    scope = Scope(cidrs=["10.96.0.0/12"], node_port_cidrs=["192.168.200.1/32", "fd00:200::1/128"])
    assert scope.contains(svc("192.168.200.1", port=30080))
    assert scope.contains(svc("192.168.200.1", port=30000)) and scope.contains(svc("192.168.200.1", port=32767))
    assert not scope.contains(svc("192.168.200.1", port=8443))
    assert not scope.contains(svc("192.168.200.1", port=32768)) and not scope.contains(svc("192.168.200.1", port=29999))
    assert not scope.contains(svc("192.168.200.2", port=30080))
    assert scope.contains(svc("fd00:200::1", port=30080, family=IPV6))
    assert not scope.contains(svc("fd00:200::1", port=443, family=IPV6))
    assert scope.contains(svc("10.96.0.1", port=8443)), "inside cidrs every port is owned"
    every_address = Scope(node_port_cidrs=["0.0.0.0/0", "::/0"], node_port_range=(31000, 31001))
    assert every_address.contains(svc("10.0.2.15", port=31001))
    assert not every_address.contains(svc("10.0.2.15", port=30080))
    assert every_address.describe()["node_port_range"] == "31000-31001"


def test_exclusive_never_deletes_a_neighbour_on_the_node_address():
    current = table(svc("192.168.200.1", port=30080), svc("192.168.200.1", port=8443), svc("10.96.0.5"))
    scope = Scope(cidrs=["10.96.0.0/12"], node_port_cidrs=["192.168.200.1/32"])
    assert sorted(lines(plan_changes([], current, scope, exclusive=True))) == [
        "-D -t 10.96.0.5:80", "-D -t 192.168.200.1:30080"]


@pytest.mark.parametrize(("params", "message"), [
    ({"node_port_range": "30000"}, None),
    ({"node_port_range": "32767-30000"}, "low end first"),
    ({"node_port_range": "0-100"}, "within 1-65535"),
    ({"node_port_range": "30000-99999"}, "within 1-65535"),
    ({"node_port_range": "a-b"}, "is not a port range"),
    ({"node_port_cidrs": ["192.168.200.300/32"]}, "scope.node_port_cidrs: '192.168.200.300/32' is not a network"),
    ({"cidrs": ["10.96.0.0/33"]}, "scope.cidrs: '10.96.0.0/33' is not a network"),
])
def test_scope_settings_name_the_bad_value(params, message):
    if message is None:
        assert scope_settings(params)["node_port_range"] == (30000, 30000)
        return
    with pytest.raises(KubeIpvsError, match=message):
        scope_settings(params)


def test_scope_settings_defaults():
    assert scope_settings({}) == {"cidrs": [], "dummy_interface": None, "fwmarks": [], "node_port_cidrs": [],
                                  "node_port_range": (30000, 32767)}


# --- graceful drain ---------------------------------------------------------------------------

LABEL = "tcp/10.96.0.1:80"


def drain_setup(active, inactive, protocol=PROTO_TCP, weight=1):
    current = table(svc(protocol=protocol, dests=[d("10.0.0.1"), d("10.0.0.2", weight=weight)]))
    gone = current[svc(protocol=protocol).key].dests[("10.0.0.2", 8080)]
    gone.active, gone.inactive = active, inactive
    return [svc(protocol=protocol, dests=[d("10.0.0.1")])], current


DRAIN_CASES = [
    # active, inactive, weight now, drain state, now, timeout -> lines, draining
    pytest.param(3, 0, 1, {}, 100.0, None, ["-e -t 10.96.0.1:80 -r 10.0.0.2:8080 -m -w 0"], True,
                 id="live-connections-weight-zero"),
    pytest.param(0, 4, 1, {}, 100.0, None, ["-e -t 10.96.0.1:80 -r 10.0.0.2:8080 -m -w 0"], True,
                 id="inactive-connections-count-too"),
    pytest.param(3, 0, 0, {LABEL: {"10.0.0.2:8080": 50.0}}, 100.0, None, [], True,
                 id="already-draining-no-change"),
    pytest.param(0, 0, 0, {LABEL: {"10.0.0.2:8080": 50.0}}, 100.0, None, ["-d -t 10.96.0.1:80 -r 10.0.0.2:8080"],
                 False, id="connections-gone-delete"),
    pytest.param(3, 0, 0, {LABEL: {"10.0.0.2:8080": 50.0}}, 100.0, 60, [], True, id="timeout-not-reached"),
    pytest.param(3, 0, 0, {LABEL: {"10.0.0.2:8080": 50.0}}, 111.0, 60, ["-d -t 10.96.0.1:80 -r 10.0.0.2:8080"],
                 False, id="timeout-passed-delete"),
    pytest.param(3, 0, 1, {}, 100.0, 0, ["-d -t 10.96.0.1:80 -r 10.0.0.2:8080"], False,
                 id="zero-timeout-deletes-at-once"),
]


@pytest.mark.parametrize(("active", "inactive", "weight", "state", "now", "timeout", "expected", "draining"),
                         DRAIN_CASES)
def test_drain(active, inactive, weight, state, now, timeout, expected, draining):
    desired, current = drain_setup(active, inactive, weight=weight)
    plan = plan_changes(desired, current, drain_state=state, now=now, drain_timeout=timeout)
    assert lines(plan) == expected
    assert plan.draining == ([f"{LABEL} -> 10.0.0.2:8080"] if draining else [])
    if draining:
        started = state.get(LABEL, {}).get("10.0.0.2:8080", now)
        assert plan.drain_state == {LABEL: {"10.0.0.2:8080": started}}
    else:
        assert plan.drain_state == {}


def test_udp_real_servers_are_not_drained():
    desired, current = drain_setup(5, 5, protocol=PROTO_UDP)
    plan = plan_changes(desired, current, now=1.0)
    assert lines(plan) == ["-d -u 10.96.0.1:80 -r 10.0.0.2:8080"]
    assert plan.draining == []


def test_draining_server_listed_again_gets_its_weight_back():
    desired, current = drain_setup(3, 0, weight=0)
    desired[0].dests[("10.0.0.2", 8080)] = d("10.0.0.2")
    plan = plan_changes(desired, current, drain_state={LABEL: {"10.0.0.2:8080": 1.0}}, now=2.0)
    assert lines(plan) == ["-e -t 10.96.0.1:80 -r 10.0.0.2:8080 -m -w 1"]
    assert plan.drain_state == {} and plan.draining == []


def test_merge_drain_state_keeps_other_services():
    desired, current = drain_setup(3, 0)
    plan = plan_changes(desired, current, now=5.0)
    old = {"tcp/10.96.0.7:80": {"10.0.0.9:80": 1.0}, LABEL: {"10.0.0.3:8080": 1.0}}
    merged = merge_drain_state(old, plan, {LABEL})
    assert merged == {"tcp/10.96.0.7:80": {"10.0.0.9:80": 1.0}, LABEL: {"10.0.0.2:8080": 5.0}}


# --- reporting --------------------------------------------------------------------------------


def test_summary_stays_short_at_scale():
    desired = [svc(f"10.96.{i // 256}.{i % 256}", dests=[d("10.0.0.1")]) for i in range(10000)]
    plan = plan_changes(desired, {})
    text = summarize(plan, limit=20)
    assert text.splitlines()[0] == "# add-service 10000, add-dest 10000"
    assert len(text.splitlines()) == 22
    assert text.splitlines()[-1] == "# ... 19980 more changes"
    assert result_counts(plan) == {"services_added": 10000, "services_updated": 0, "services_removed": 0,
                                   "real_servers_added": 10000, "real_servers_updated": 0,
                                   "real_servers_removed": 0, "real_servers_draining": 0}


def test_as_dict_normalises_the_hashed_flag():
    current = table(svc(dests=[d("10.0.0.1")]))
    shown = next(iter(current.values())).as_dict()
    assert shown["flags"] == 0
    assert shown["real_servers"][0]["forwarding"] == "nat"
    assert Dest("10.0.0.1", 80).forwarding == FWD_MASQ
