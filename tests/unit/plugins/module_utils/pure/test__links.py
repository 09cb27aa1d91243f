# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Dummy link addresses: normalisation, the add/remove difference, rtnetlink bytes and parsing."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._links import (
    canonical_host,
    normalize_addresses,
    plan_addresses,
    validate_link_name,
)

V4, V6 = IPV4, IPV6


@pytest.mark.parametrize(("value", "expected"), [
    ("10.96.0.1", (V4, "10.96.0.1")),
    ("10.96.0.1/32", (V4, "10.96.0.1")),
    (" FD00:10:96:0::1/128", (V6, "fd00:10:96::1")),
])
def test_canonical_host(value, expected):
    assert canonical_host(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("10.96.0.0/24", "only host addresses (/32)"),
    ("fd00::1/64", "only host addresses (/128)"),
    ("10.96.0.256", "not an IPv4 or IPv6 address"),
    ("kube-ipvs0", "not an IPv4 or IPv6 address"),
])
def test_bad_addresses(value, message):
    with pytest.raises(KubeIpvsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_host(value)


def test_normalize_addresses_collapses_duplicates():
    assert normalize_addresses(["10.96.0.1", "10.96.0.1/32", "fd00::1"]) == {"10.96.0.1": V4, "fd00::1": V6}


PLAN_CASES = [
    pytest.param({"10.96.0.1": V4, "10.96.0.2": V4}, {}, False, [(V4, "10.96.0.1"), (V4, "10.96.0.2")], [],
                 id="empty-link"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32)}, False, [], [], id="present-never-re-added"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 24)}, True, [], [], id="other-prefix-counts-as-present"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32), "10.96.0.9": (V4, 32), "fd00::9": (V6, 128)}, False,
                 [], [], id="not-exclusive-keeps-others"),
    pytest.param({"10.96.0.1": V4}, {"10.96.0.1": (V4, 32), "10.96.0.9": (V4, 32), "fd00::9": (V6, 128)}, True,
                 [], [(V4, "10.96.0.9", 32), (V6, "fd00::9", 128)], id="exclusive-removes-others"),
]


@pytest.mark.parametrize(("wanted", "current", "exclusive", "to_add", "to_remove"), PLAN_CASES)
def test_plan_addresses(wanted, current, exclusive, to_add, to_remove):
    assert plan_addresses(wanted, current, exclusive) == (to_add, to_remove)


def test_plan_at_scale_adds_only_the_difference():
    current = {f"10.96.{i // 256}.{i % 256}": (V4, 32) for i in range(10000)}
    wanted = {f"10.96.{i // 256}.{i % 256}": V4 for i in range(10005)}
    to_add, to_remove = plan_addresses(wanted, current, True)
    expected = ["10.96.39.16", "10.96.39.17", "10.96.39.18", "10.96.39.19", "10.96.39.20"]
    assert [text for _f, text in to_add] == expected
    assert to_remove == []


@pytest.mark.parametrize("name", ["", "a" * 16, "bad/name", "with space"])
def test_bad_link_names(name):
    with pytest.raises(KubeIpvsError):
        validate_link_name(name)
