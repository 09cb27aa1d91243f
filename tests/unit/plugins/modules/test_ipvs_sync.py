# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ipvs_sync end to end against the fake IPVS table and fake links."""

from __future__ import annotations

import errno
import gc
import json

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _ipvs_reconcile
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import PROTO_TCP, PROTO_UDP, Dest, Service
from ansible_collections.kubeipvs.node.plugins.modules import ipvs_sync
from ansible_collections.kubeipvs.node.tests.unit.fakes.ipvs import FakeIpvsKernel, FakeLinkKernel
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import run_main

FOREIGN = Service(IPV4, PROTO_TCP, "192.0.2.50", 80, scheduler="wlc",
                  dests={("192.0.2.60", 80): Dest("192.0.2.60", 80)})


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    fake = FakeIpvsKernel([FOREIGN])
    links = FakeLinkKernel({"kube-ipvs0": ("dummy", {"10.96.0.1": (IPV4, 32),
                                                     "10.96.0.10": (IPV4, 32)})})
    monkeypatch.setattr(_ipvs_reconcile, "open_ipvs", lambda modprobe, check_mode, schedulers: fake)
    monkeypatch.setattr(ipvs_sync, "LinkKernel", lambda: links)
    monkeypatch.setattr(_ipvs_reconcile, "DRAIN_STATE_PATH", str(tmp_path / "drain.json"))
    return fake


SERVICES = [
    {"address": "10.96.0.1", "port": 443, "real_servers": [{"address": "10.0.0.1", "port": 6443}]},
    {"address": "10.96.0.10", "port": 53, "protocol": "udp",
     "real_servers": [{"address": "10.0.0.2"}, {"address": "10.0.0.3"}]},
]
SCOPE = {"dummy_interface": "kube-ipvs0"}


def test_converge_then_idempotent(kernel, capsys):
    result = run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE, timeouts={"tcp": 901})
    assert result["changed"] is True
    assert result["counts"]["services_added"] == 2 and result["counts"]["real_servers_added"] == 3
    assert result["services"] == 2 and result["foreign_services"] == 1
    assert result["timeouts"]["tcp"] == 901
    assert result["diff"]["prepared"].startswith("# add-service 2, add-dest 3\n")
    assert "-A -u 10.96.0.10:53 -s rr" in result["changes"]
    assert FOREIGN.key in kernel.table
    again = run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE, timeouts={"tcp": 901})
    assert again["changed"] is False
    assert not any(again["counts"].values())


def test_the_table_is_read_and_planned_with_the_collector_paused(kernel, capsys, monkeypatch):
    seen = []
    read = kernel.read

    def watching_read(*args, **kwargs):
        seen.append(gc.isenabled())
        return read(*args, **kwargs)

    monkeypatch.setattr(kernel, "read", watching_read)
    result = run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE)
    assert result["changed"] is True
    assert seen == [False]
    assert gc.isenabled()


def test_check_mode_changes_nothing(kernel, capsys):
    result = run_main(ipvs_sync, capsys, check_mode=True, services=SERVICES, scope=SCOPE, timeouts={"udp": 30})
    assert result["changed"] is True
    assert result["counts"]["services_added"] == 2
    assert kernel.applied == []
    assert set(kernel.table) == {FOREIGN.key}
    assert kernel.timeouts["udp"] == 300 and result["timeouts"]["udp"] == 30


def test_exclusive_never_touches_foreign_services(kernel, capsys):
    run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE)
    result = run_main(ipvs_sync, capsys, services=SERVICES[:1], scope=SCOPE)
    assert result["counts"]["services_removed"] == 1
    assert set(kernel.table) == {FOREIGN.key, (IPV4, PROTO_TCP, "10.96.0.1", 443, 0)}
    assert kernel.table[FOREIGN.key].scheduler == "wlc"


@pytest.mark.parametrize(("services", "message"), [
    ([{"address": "192.0.2.50", "port": 80}], "outside scope"),
    ([{"address": "10.96.0.1", "port": 0}], "port must be between 1 and 65535"),
    ([{"address": "10.96.0.1", "port": 80, "scheduler": "nope"}], "unknown scheduler"),
    ([{"address": "10.96.0.1", "port": 80}, {"address": "10.96.0.1", "port": 80}], "duplicate"),
    ([{"fwmark": 5, "port": 80}], "a fwmark service has no port"),
    ([{"address": "10.96.0.1", "port": 80}, {"address": "10.96.0.x", "port": 80}], "not an IPv4 or IPv6"),
])
def test_bad_input_fails_before_any_change(kernel, capsys, services, message):
    result = run_main(ipvs_sync, capsys, services=SERVICES + services, scope=SCOPE)
    assert result["failed"] is True
    assert message in result["msg"]
    assert kernel.applied == [] and kernel.reads == 0


def test_scope_is_required_to_own_something(kernel, capsys):
    result = run_main(ipvs_sync, capsys, services=SERVICES, scope={"cidrs": []})
    assert result["failed"] and "scope needs at least one" in result["msg"]


def test_fwmark_scope(kernel, capsys):
    marks = [{"fwmark": 7, "real_servers": [{"address": "10.0.0.9", "port": 0}]}]
    result = run_main(ipvs_sync, capsys, services=marks, scope={"fwmarks": [7]})
    assert result["counts"]["services_added"] == 1
    assert run_main(ipvs_sync, capsys, services=[], scope={"fwmarks": [7]})["counts"]["services_removed"] == 1
    assert set(kernel.table) == {FOREIGN.key}


def test_services_file_and_drain(kernel, capsys, tmp_path):
    path = tmp_path / "services.json"
    path.write_text(json.dumps({"services": SERVICES}))
    run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)
    key = (IPV4, PROTO_TCP, "10.96.0.1", 443, 0)
    # A new endpoint replaces the old one while it still serves a connection: drained, not deleted.
    moved = [dict(SERVICES[0], real_servers=[{"address": "10.0.0.5", "port": 6443}]), SERVICES[1]]
    path.write_text(json.dumps(moved))
    kernel.set_connections(key, ("10.0.0.1", 6443), active=1)
    result = run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)
    assert result["draining"] == ["tcp/10.96.0.1:443 -> 10.0.0.1:6443"]
    assert kernel.table[key].dests[("10.0.0.1", 6443)].weight == 0
    assert run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)["changed"] is False
    kernel.set_connections(key, ("10.0.0.1", 6443), active=0)
    result = run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)
    assert result["counts"]["real_servers_removed"] == 1 and result["draining"] == []
    assert set(kernel.table[key].dests) == {("10.0.0.5", 6443)}


def test_services_file_must_be_a_list(kernel, capsys, tmp_path):
    path = tmp_path / "services.json"
    path.write_text('{"nothing": 1}')
    result = run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)
    assert result["failed"] and "must hold a list" in result["msg"]


def test_changes_the_kernel_refuses_fail_the_task_naming_them_and_the_others_stay_applied(kernel, capsys):
    refused = "-a -u 10.96.0.10:53 -r 10.0.0.3:53 -m -w 1"
    kernel.refusing[refused] = errno.ENOMEM
    result = run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE)
    assert result["failed"] is True
    assert result["msg"].startswith("the kernel refused 1 of 5 IPVS changes (the others were applied): ")
    assert result["failed_changes"] == [f"{refused}: Cannot allocate memory"]
    udp = kernel.table[(IPV4, PROTO_UDP, "10.96.0.10", 53, 0)]
    assert list(udp.dests) == [("10.0.0.2", 53)]
    kernel.refusing.clear()
    again = run_main(ipvs_sync, capsys, services=SERVICES, scope=SCOPE)
    assert again["changes"] == [refused]


@pytest.mark.parametrize("text", [
    '[{"address": "10.96.0.1", "port": 1e400}]',
    '[{"address": "10.96.0.1", "port": Infinity}]',
    '[{"address": "10.96.0.1", "port": NaN}]',
    '[{"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "weight": -Infinity}]}]',
    '[{"address": "10.96.0.1", "port": 80, "protocol": ["tcp"]}]',
    '[{"address": "10.96.0.1", "port": 80, "family": {"a": 1}}]',
    '[{"address": "10.96.0.1", "port": 80, "scheduler_flags": 5}]',
    '[{"address": "10.96.0.1", "port": 80, "scheduler_flags": [["sh-port"]]}]',
    '[{"address": "10.96.0.1", "port": 80, "netmask": "\\u00b2"}]',
    '[{"address": "10.96.0.1\\u0000", "port": 80}]',
    '[{"address": "10.96.0.1", "port": 80, "real_servers": [{"address": "10.0.0.1", "forwarding": []}]}]',
    '[{"address": "10.96.0.1", "port": 80, "state": {}}]',
    "[" * 100000 + "]" * 100000,
    "services:\n  - address: 10.96.0.1\n    port: 80\n    1: 2\n    colour: red\n",
])
def test_hostile_services_files_fail_cleanly_before_any_change(kernel, capsys, tmp_path, text):
    path = tmp_path / "services.json"
    path.write_text(text)
    result = run_main(ipvs_sync, capsys, services_file=str(path), scope=SCOPE)
    assert result["failed"] is True and "Traceback" not in result.get("module_stderr", ""), result
    assert "exception" not in result, result["exception"]
    assert kernel.applied == [] and kernel.reads == 0


@pytest.mark.parametrize(("scope", "message"), [
    ({"dummy_interface": "kube-ipvs0\n"}, "not a valid interface name"),
    ({"dummy_interface": "a/b"}, "not a valid interface name"),
    ({"cidrs": ["fe80::%eth0/64"]}, "scope"),
    ({"fwmarks": [0]}, "scope.fwmarks"),
    ({"fwmarks": [2 ** 32]}, "scope.fwmarks"),
])
def test_hostile_scope_values_fail_before_anything_is_read(kernel, capsys, scope, message):
    result = run_main(ipvs_sync, capsys, services=SERVICES, scope=scope)
    assert result["failed"] is True and message in result["msg"], result
    assert kernel.reads == 0
