# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel module names, modules.* parsing, parameters and the owned drop-ins' text."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import (
    module_name_from_path,
    parse_modprobe_options,
    render_modprobe_options,
    same_param,
    validate_owned_path,
    validate_params,
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("kernel/net/netfilter/ipvs/ip_vs.ko", "ip_vs"),
        ("kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz", "ip_vs_rr"),
        ("kernel/net/netfilter/nf_conntrack.ko.zst", "nf_conntrack"),
        ("kernel/drivers/md/dm-mod.ko.gz", "dm_mod"),
        ("  kernel/net/bridge/br_netfilter.ko  ", "br_netfilter"),
        ("modules.order", None),
        ("kernel/net/foo.kobar", None),
        ("kernel/net/foo.xz", None),
    ],
)
def test_module_name_from_path(path, name):
    assert module_name_from_path(path) == name


@pytest.mark.parametrize(
    ("wanted", "current", "same"),
    [
        (21, "21", True),
        ("21", "21", True),
        ("2121", "21", False),
        (True, "Y", True),
        ("1", "Y", True),
        ("yes", "Y", True),
        ("0", "Y", False),
        (False, "N", True),
        ("y", "N", False),
        ("21,2121", "21,2121", True),
    ],
)
def test_same_param(wanted, current, same):
    assert same_param(wanted, current) is same


@pytest.mark.parametrize("params", [{"bad key": 1}, {"ok": "two words"}, {"ok": ""}, {"ok": "a#b"}])
def test_validate_params_rejects_what_modprobe_d_cannot_hold(params):
    with pytest.raises(KubeIpvsError):
        validate_params(params)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/etc/modprobe.d/kubeipvs-node.conf", True),
        ("/etc/modprobe.d/sub/x.conf", False),
        ("/etc/modprobe.d/x.txt", False),
        ("/etc/x.conf", False),
    ],
)
def test_validate_owned_path(path, ok):
    if ok:
        validate_owned_path(path, "/etc/modprobe.d", "modprobe_file")
    else:
        with pytest.raises(KubeIpvsError, match=r"modprobe_file must be a \.conf file directly under"):
            validate_owned_path(path, "/etc/modprobe.d", "modprobe_file")


def test_rendered_options_parse_back_to_themselves():
    options = {"nf_conntrack": {"hashsize": "32768", "acct": "1"}, "ip_vs": {"conn_tab_bits": "18"}}
    text = render_modprobe_options(options, "kernel modules")
    assert parse_modprobe_options(text) == options
    assert render_modprobe_options(parse_modprobe_options(text), "kernel modules") == text
