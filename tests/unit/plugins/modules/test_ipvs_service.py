# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ipvs_service end to end against the fake IPVS table."""

from __future__ import annotations

import errno

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _ipvs_reconcile
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import (
    ADD_SERVICE,
    DEL_SERVICE,
    PROTO_TCP,
    SET_DEST,
    SET_SERVICE,
)
from ansible_collections.kubeipvs.node.plugins.modules import ipvs_service
from ansible_collections.kubeipvs.node.tests.unit.fakes.ipvs import FakeIpvsKernel
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import run_main

KEY = (IPV4, PROTO_TCP, "10.96.0.10", 80, 0)
ARGS = {"address": "10.96.0.10", "port": 80, "real_servers": [{"address": "10.0.0.1", "port": 8080},
                                                              {"address": "10.0.0.2", "port": 8080}]}


@pytest.fixture
def kernel(monkeypatch, tmp_path):
    fake = FakeIpvsKernel()
    monkeypatch.setattr(_ipvs_reconcile, "open_ipvs", lambda modprobe, check_mode, schedulers: fake)
    monkeypatch.setattr(_ipvs_reconcile, "DRAIN_STATE_PATH", str(tmp_path / "drain.json"))
    return fake


def test_create_then_idempotent(kernel, capsys):
    result = run_main(ipvs_service, capsys, **ARGS)
    assert result["changed"] is True
    assert result["changes"][0] == "-A -t 10.96.0.10:80 -s rr"
    assert result["diff"]["before"] == {}
    assert [server["address"] for server in result["diff"]["after"]["real_servers"]] == ["10.0.0.1", "10.0.0.2"]
    assert run_main(ipvs_service, capsys, **ARGS)["changed"] is False


def test_updates_in_place(kernel, capsys):
    run_main(ipvs_service, capsys, **ARGS)
    kernel.applied.clear()
    changed = {**ARGS, "scheduler": "wrr", "real_servers": [{"address": "10.0.0.1", "port": 8080, "weight": 4},
                                                            {"address": "10.0.0.2", "port": 8080}]}
    result = run_main(ipvs_service, capsys, **changed)
    assert [op for op, _s, _d in kernel.applied] == [SET_SERVICE, SET_DEST]
    assert result["service"]["scheduler"] == "wrr"
    assert kernel.table[KEY].dests[("10.0.0.1", 8080)].weight == 4


def test_purge_is_opt_in(kernel, capsys):
    run_main(ipvs_service, capsys, **ARGS)
    fewer = {**ARGS, "real_servers": ARGS["real_servers"][:1]}
    assert run_main(ipvs_service, capsys, **fewer)["changed"] is False
    result = run_main(ipvs_service, capsys, purge_real_servers=True, **fewer)
    assert result["changes"] == ["-d -t 10.96.0.10:80 -r 10.0.0.2:8080"]


def test_check_mode_and_absent(kernel, capsys):
    result = run_main(ipvs_service, capsys, check_mode=True, **ARGS)
    assert result["changed"] is True and kernel.applied == [] and kernel.table == {}
    run_main(ipvs_service, capsys, **ARGS)
    result = run_main(ipvs_service, capsys, address="10.96.0.10", port=80, state="absent")
    assert result["changed"] is True and result["service"] is None
    assert [op for op, _s, _d in kernel.applied] == [ADD_SERVICE, "add-dest", "add-dest", DEL_SERVICE]
    assert run_main(ipvs_service, capsys, address="10.96.0.10", port=80, state="absent")["changed"] is False


@pytest.mark.parametrize(("args", "message"), [
    ({"fwmark": 5, "port": 80}, "mutually exclusive"),
    ({"address": "10.96.0.10"}, "port"),
    ({"address": "10.96.0.10", "port": 70000}, "port must be between 1 and 65535"),
    ({"address": "not-an-ip", "port": 80}, "not an IPv4 or IPv6 address"),
    ({"address": "10.96.0.10", "port": 80, "scheduler": "rr", "scheduler_flags": ["mh-port"]},
     "only applies to the mh scheduler"),
])
def test_bad_input(kernel, capsys, args, message):
    result = run_main(ipvs_service, capsys, **args)
    assert result["failed"] is True and message in result["msg"]
    assert kernel.applied == []


def test_changes_the_kernel_refuses_fail_the_task_naming_them(kernel, capsys):
    kernel.refusing["-a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m -w 1"] = errno.EINVAL
    result = run_main(ipvs_service, capsys, **ARGS)
    assert result["failed"] is True
    assert result["msg"] == ("the kernel refused 1 of 3 IPVS changes (the others were applied): "
                             "-a -t 10.96.0.10:80 -r 10.0.0.2:8080 -m -w 1: Invalid argument")
    assert list(kernel.table[KEY].dests) == [("10.0.0.1", 8080)]
