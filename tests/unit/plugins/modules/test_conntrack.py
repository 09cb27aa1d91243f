# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""conntrack end to end on a fake root: the real module code, a fake kernel behind run_command."""

from __future__ import annotations

import os

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import conntrack

RELEASE = "6.1.0-test-amd64"
NETFILTER = "proc/sys/net/netfilter"
HASHSIZE = "sys/module/nf_conntrack/parameters/hashsize"
MODULES_HEADER = "# Managed by kubeipvs.node (kernel modules). Do not edit: changes are overwritten.\n"
CPUS = len(os.sched_getaffinity(0))
EXPECTED_MAX = max(32768 * CPUS, 131072)


class FakeUname:
    release = RELEASE


def load_nf_conntrack(root, hashsize):
    (root / "proc/modules").write_text("nf_conntrack 1 0 - Live 0x0\n")
    (root / NETFILTER).mkdir(parents=True, exist_ok=True)
    for key, value in (
        ("nf_conntrack_max", "65536"),
        ("nf_conntrack_count", "7"),
        ("nf_conntrack_tcp_timeout_established", "432000"),
        ("nf_conntrack_tcp_timeout_close_wait", "60"),
    ):
        (root / NETFILTER / key).write_text(value + "\n")
    (root / HASHSIZE).parent.mkdir(parents=True, exist_ok=True)
    (root / HASHSIZE).write_text(f"{hashsize}\n")


@pytest.fixture
def root(tmp_path, monkeypatch):
    base = tmp_path / "lib/modules" / RELEASE
    base.mkdir(parents=True)
    (base / "modules.builtin").write_text("")
    (base / "modules.dep").write_text("kernel/net/netfilter/nf_conntrack.ko:\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("")
    for pid in ("self", "1"):
        (tmp_path / "proc" / pid / "ns").mkdir(parents=True)
        (tmp_path / "proc" / pid / "ns/net").symlink_to("net:[4026531840]")
    monkeypatch.setattr(os, "uname", lambda: FakeUname)
    return tmp_path


def run(root, check_mode=False, **args):
    commands = []

    def fake_run_command(argv, data=None, binary_data=False, environ_update=None):
        commands.append(argv)
        load_nf_conntrack(root, argv[3].split("=")[1])
        return 0, "", ""

    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)):
        module = conntrack.build_module()
    module.run_command = fake_run_command
    module.get_bin_path = lambda name, required=False: name
    warnings = []
    module.warn = warnings.append
    result = conntrack.ensure_conntrack(module, root=str(root))
    return result, commands, warnings


def test_fresh_node_loads_sizes_and_persists(root):
    result, commands, _warnings = run(root)
    hashsize = EXPECTED_MAX // 4
    assert commands == [["modprobe", "--", "nf_conntrack", f"hashsize={hashsize}"]]
    assert (result["cpus"], result["nf_conntrack_max"], result["hashsize"]) == (CPUS, EXPECTED_MAX, hashsize)
    assert result["hashsize_live"] == hashsize
    assert result["nf_conntrack_count"] == 7
    assert result["kube_proxy"]["conntrack"]["maxPerCore"] == 0
    assert (root / NETFILTER / "nf_conntrack_max").read_text() == f"{EXPECTED_MAX}\n"
    assert (root / NETFILTER / "nf_conntrack_tcp_timeout_established").read_text() == "86400\n"
    assert (root / NETFILTER / "nf_conntrack_tcp_timeout_close_wait").read_text() == "3600\n"
    assert (root / "etc/sysctl.d/90-kubeipvs-conntrack.conf").read_text().endswith(
        f"net.netfilter.nf_conntrack_max = {EXPECTED_MAX}\n"
        "net.netfilter.nf_conntrack_tcp_timeout_established = 86400\n"
        "net.netfilter.nf_conntrack_tcp_timeout_close_wait = 3600\n"
    )
    assert (root / "etc/modules-load.d/kubeipvs-node.conf").read_text() == MODULES_HEADER + "nf_conntrack\n"
    assert (root / "etc/modprobe.d/kubeipvs-node.conf").read_text() == (
        MODULES_HEADER + f"options nf_conntrack hashsize={hashsize}\n"
    )
    again, commands, _warnings = run(root)
    assert (again["changed"], commands) == (False, [])


def test_loaded_module_gets_its_hash_size_through_sysfs(root):
    load_nf_conntrack(root, 65536)
    result, commands, warnings = run(root, max=400000)
    assert commands == []
    assert (root / HASHSIZE).read_text() == "100000\n"
    assert result["hashsize_live"] == 100000
    assert "hashsize = 65536" in result["diff"][0]["before"]
    assert warnings == []


def test_check_mode_changes_nothing(root):
    load_nf_conntrack(root, 65536)
    result, _commands, _warnings = run(root, check_mode=True, max=400000)
    assert result["changed"]
    assert result["values"]["net.netfilter.nf_conntrack_max"] == {"before": "65536", "after": "400000"}
    assert (root / HASHSIZE).read_text() == "65536\n"
    assert (root / NETFILTER / "nf_conntrack_max").read_text() == "65536\n"
    assert not (root / "etc").exists()


def test_other_network_namespace_warns_and_persists_the_hash_size(root):
    load_nf_conntrack(root, 65536)
    (root / "proc/self/ns/net").unlink()
    (root / "proc/self/ns/net").symlink_to("net:[4026532999]")
    result, _commands, warnings = run(root, max=400000)
    assert (root / HASHSIZE).read_text() == "65536\n"
    assert result["hashsize_live"] == 65536
    assert len(warnings) == 1
    assert "hashsize stays 65536 until the next boot" in warnings[0]
    assert "hashsize=100000" in (root / "etc/modprobe.d/kubeipvs-node.conf").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max": -5}, "max must be a positive integer, got -5"),
        ({"min": 0}, "min must be a positive integer, got 0"),
        ({"max_per_core": 0}, "max_per_core must be a positive integer, got 0"),
        ({"hashsize": -1}, "hashsize must be a positive integer, got -1"),
        ({"tcp_timeout_established": 0}, "tcp_timeout_established must be a positive integer, got 0"),
        ({"file": "/etc/sysctl.conf"}, "file must be a .conf file directly under /etc/sysctl.d/"),
    ],
)
def test_bad_input_changes_nothing(root, args, message):
    with pytest.raises(KubeIpvsError) as caught:
        run(root, **args)
    assert caught.value.msg.startswith(message)
    assert (root / "proc/modules").read_text() == ""
    assert not (root / "etc").exists()


@pytest.mark.parametrize(("args", "message"), [
    ({"hashsize": 2 ** 28}, "hashsize must be at most 268435455"),
    ({"max": 2 ** 31}, "max must be at most 2147483647"),
    ({"tcp_timeout_established": 2147484}, "tcp_timeout_established must be at most 2147483"),
    ({"tcp_timeout_close_wait": 10 ** 12}, "tcp_timeout_close_wait must be at most 2147483"),
    ({"max_per_core": 2 ** 31 - 1}, "above nf_conntrack_max's limit"),
])
def test_absurd_sizes_are_refused_in_check_mode_too(root, monkeypatch, args, message):
    monkeypatch.setattr(conntrack, "cpu_count", lambda: 2)  # max_per_core x CPUs overflows from two CPUs on
    for check_mode in (True, False):
        with pytest.raises(KubeIpvsError, match=message):
            run(root, check_mode=check_mode, **args)
    assert (root / "proc/modules").read_text() == "" and not (root / "etc").exists()


def test_a_refused_value_puts_back_the_hash_size_and_values_written_before_it(root, monkeypatch):
    load_nf_conntrack(root, 16384)
    real_write = conntrack.Sysctl.write

    def refusing(self, key, text):
        if key.endswith("close_wait"):
            raise KubeIpvsError(f"cannot set sysctl {key} to {text!r}: Invalid argument", key=key)
        real_write(self, key, text)

    monkeypatch.setattr(conntrack.Sysctl, "write", refusing)
    with pytest.raises(KubeIpvsError, match="this call's changes were undone"):
        run(root, max=400000, tcp_timeout_close_wait=7200)
    assert (root / HASHSIZE).read_text() == "16384\n"
    assert (root / NETFILTER / "nf_conntrack_max").read_text() == "65536\n"
    assert (root / NETFILTER / "nf_conntrack_tcp_timeout_established").read_text() == "432000\n"
    assert not (root / "etc").exists()
