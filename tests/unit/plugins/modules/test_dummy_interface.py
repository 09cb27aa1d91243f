# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""dummy_interface end to end against fake links (which refuse re-added addresses like the kernel)."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4
from ansible_collections.kubeipvs.node.plugins.modules import dummy_interface
from ansible_collections.kubeipvs.node.tests.unit.fakes.ipvs import FakeLinkKernel
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import run_main


@pytest.fixture
def links(monkeypatch):
    fake = FakeLinkKernel({"eth0": ("", {"10.0.2.15": (IPV4, 24)})})
    monkeypatch.setattr(dummy_interface, "LinkKernel", lambda: fake)
    return fake


def test_create_add_idempotent(links, capsys):
    result = run_main(dummy_interface, capsys, addresses=["10.96.0.1", "10.96.0.10/32", "fd00::1"])
    assert result["changed"] is True and result["addresses_added"] == 3
    assert result["link"]["kind"] == "dummy" and result["link"]["up"] is False and result["link"]["noarp"] is True
    assert links.calls[0] == ("add_dummy", "kube-ipvs0")
    again = run_main(dummy_interface, capsys, addresses=["10.96.0.1/32", "10.96.0.10", "fd00:0::1"])
    assert again["changed"] is False and again["address_count"] == 3


def test_ten_thousand_addresses_then_one_more_adds_one(links, capsys):
    many = [f"10.96.{i // 256}.{i % 256}" for i in range(10000)]
    assert run_main(dummy_interface, capsys, addresses=many)["addresses_added"] == 10000
    links.calls.clear()
    result = run_main(dummy_interface, capsys, addresses=[*many, "10.97.0.1"])
    assert result["addresses_added"] == 1 and links.calls == [("change_addresses", 1, 0)]


def test_exclusive_removes_unlisted(links, capsys):
    run_main(dummy_interface, capsys, addresses=["10.96.0.1", "10.96.0.2"])
    result = run_main(dummy_interface, capsys, addresses=["10.96.0.1"], exclusive=True)
    assert result["addresses_removed"] == 1 and set(links.addrs["kube-ipvs0"]) == {"10.96.0.1"}
    assert "10.96.0.2/32" in result["diff"]["before"]["addresses"]


def test_check_mode(links, capsys):
    result = run_main(dummy_interface, capsys, check_mode=True, addresses=["10.96.0.1"])
    assert result["changed"] is True and result["address_count"] == 1
    assert links.calls == [] and "kube-ipvs0" not in links.links


def test_refuses_other_link_types(links, capsys):
    result = run_main(dummy_interface, capsys, name="eth0", addresses=["10.96.0.1"])
    assert result["failed"] is True and "not dummy" in result["msg"]
    assert links.calls == []
    result = run_main(dummy_interface, capsys, name="eth0", state="absent")
    assert result["failed"] is True and links.calls == []


def test_absent(links, capsys):
    run_main(dummy_interface, capsys, addresses=["10.96.0.1"])
    assert run_main(dummy_interface, capsys, state="absent")["changed"] is True
    assert "kube-ipvs0" not in links.links
    assert run_main(dummy_interface, capsys, state="absent")["changed"] is False


def test_bad_address_fails_before_change(links, capsys):
    result = run_main(dummy_interface, capsys, addresses=["10.96.0.1", "10.96.0.0/24"])
    assert result["failed"] is True and "only host addresses" in result["msg"] and links.calls == []
