# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""sysctl keys, value normalisation and drop-in rendering."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import (
    key_parts,
    normalise_value,
    parse_dropin,
    render_dropin,
    required_module,
    value_text,
)


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("net.ipv4.ip_forward", ["net", "ipv4", "ip_forward"]),
        (" net.ipv4.ip_forward ", ["net", "ipv4", "ip_forward"]),
        ("net.bridge.bridge-nf-call-iptables", ["net", "bridge", "bridge-nf-call-iptables"]),
        ("net/ipv4/conf/eth0.100/rp_filter", ["net", "ipv4", "conf", "eth0.100", "rp_filter"]),
    ],
)
def test_key_parts(key, parts):
    assert key_parts(key) == parts


@pytest.mark.parametrize("key", ["", "net..ip_forward", "net.ipv4.ip forward", "net/../../etc/passwd", ".net", "a\nb"])
def test_key_parts_rejects_bad_keys(key):
    with pytest.raises(KubeIpvsError, match="is not valid"):
        key_parts(key)


@pytest.mark.parametrize(
    ("key", "module"),
    [
        ("net.ipv4.vs.conntrack", "ip_vs"),
        ("net.ipv4.vs.expire_nodest_conn", "ip_vs"),
        ("net.netfilter.nf_conntrack_max", "nf_conntrack"),
        ("net.nf_conntrack_max", "nf_conntrack"),
        ("net/netfilter/nf_conntrack_tcp_timeout_established", "nf_conntrack"),
        ("net.bridge.bridge-nf-call-iptables", "br_netfilter"),
        ("net.ipv4.ip_forward", None),
        ("net.ipv4.vsx", None),
    ],
)
def test_required_module(key, module):
    assert required_module(key) == module


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (True, "1"),
        (False, "0"),
        ("  2 ", "2"),
        ([32768, 60999], "32768 60999"),
        ("32768\t60999", "32768 60999"),
        ("4096   87380\t6291456", "4096 87380 6291456"),
        ("cubic", "cubic"),
    ],
)
def test_value_text(value, text):
    assert value_text(value) == text


@pytest.mark.parametrize(
    ("wanted", "current", "normal"),
    [
        (1, "0", "1"),
        ("010", "0", "10"),
        (-1, "0", "-1"),
        ([1024, 65000], "32768 60999", "1024 65000"),
        ("1024\t65000", "32768 60999", "1024 65000"),
        ("bbr", "cubic", "bbr"),  # a text key takes any text
        ("anything", None, "anything"),  # key not there yet: nothing to compare with
    ],
)
def test_normalise_value(wanted, current, normal):
    assert normalise_value("k", wanted, current) == normal


@pytest.mark.parametrize(
    ("wanted", "current", "message"),
    [
        ("yes", "0", "is numeric (the kernel prints '0') but the value 'yes' is not an integer"),
        ("1.5", "0", "not an integer"),
        ("1024 x", "32768 60999", "not an integer"),
        ("1024", "32768 60999", "takes 2 integers"),
        ("1 2 3", "32768 60999", "takes 2 integers"),
        ("", "0", "must not be empty"),
    ],
)
def test_normalise_value_rejects(wanted, current, message):
    with pytest.raises(KubeIpvsError) as caught:
        normalise_value("k", wanted, current)
    assert message in caught.value.msg


def test_render_dropin_keeps_order_and_parses_back():
    values = {"net.ipv4.vs.conntrack": "1", "net.ipv4.ip_forward": "1", "net.ipv4.ip_local_port_range": "1024 65000"}
    text = render_dropin(values, "sysctl")
    assert text == (
        "# Managed by kubeipvs.node (sysctl). Do not edit: changes are overwritten.\n"
        "net.ipv4.vs.conntrack = 1\n"
        "net.ipv4.ip_forward = 1\n"
        "net.ipv4.ip_local_port_range = 1024 65000\n"
    )
    assert parse_dropin(text) == values


def test_parse_dropin_reads_what_systemd_sysctl_reads():
    text = "# c\n; c\n-net.ipv4.ip_forward=1\nnet/ipv4/conf/all/arp_ignore =  1\nkernel.printk = 4\t4 1 7\n\ngarbage\n"
    assert parse_dropin(text) == {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.arp_ignore": "1",
        "kernel.printk": "4 4 1 7",
    }
