# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kernel_module end to end on a fake root: the real module code, a fake kernel behind run_command."""

from __future__ import annotations

import os

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import kernel_module

RELEASE = "6.1.0-test-amd64"
LOAD = "etc/modules-load.d/kubeipvs-node.conf"
OPTIONS = "etc/modprobe.d/kubeipvs-node.conf"
HEADER = "# Managed by kubeipvs.node (kernel modules). Do not edit: changes are overwritten.\n"


@pytest.fixture
def root(tmp_path, monkeypatch):
    base = tmp_path / "lib/modules" / RELEASE
    base.mkdir(parents=True)
    (base / "modules.builtin").write_text("kernel/net/ipv4/tcp_bbr.ko\n")
    (base / "modules.dep").write_text(
        "kernel/net/netfilter/ipvs/ip_vs.ko.xz:\n"
        "kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n"
    )
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("")
    monkeypatch.setattr(os, "uname", lambda: FakeUname)  # the running kernel's release
    return tmp_path


class FakeUname:
    release = RELEASE


def run(root, check_mode=False, **args):
    """Run the module body with a fake kernel; returns (result, commands run)."""
    commands = []

    def fake_run_command(argv, data=None, binary_data=False, environ_update=None):
        assert environ_update["LC_ALL"] == "C"
        commands.append(argv)
        proc = root / "proc/modules"
        name = argv[2]
        if argv[0] == "modprobe":
            proc.write_text(proc.read_text() + f"{name} 1 0 - Live 0x0\n")
            params = root / "sys/module" / name / "parameters"
            params.mkdir(parents=True, exist_ok=True)
            for item in argv[3:]:
                key, _sep, value = item.partition("=")
                (params / key).write_text(value + "\n")
        else:
            proc.write_text("".join(line + "\n" for line in proc.read_text().splitlines() if line.split()[0] != name))
        return 0, "", ""

    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)):
        module = kernel_module.build_module()
    module.run_command = fake_run_command
    module.get_bin_path = lambda name, required=False: name
    return kernel_module.ensure_kernel_modules(module, root=str(root)), commands


def test_check_mode_plans_without_loading_or_writing(root):
    result, commands = run(root, check_mode=True, name=["ip_vs", "ip-vs-rr", "tcp_bbr"])
    assert result["changed"]
    assert commands == []
    assert not (root / LOAD).exists()
    assert [m["state"] for m in result["modules"]] == ["loaded", "loaded", "builtin"]
    assert result["diff"][0]["after"] == "ip_vs: loaded\nip_vs_rr: loaded\ntcp_bbr: builtin\n"
    assert result["diff"][1]["after"] == HEADER + "ip_vs\nip_vs_rr\n"


def test_load_persist_then_nothing_to_do(root):
    result, commands = run(root, name=["ip_vs", "ip_vs_rr", "tcp_bbr"])
    assert result["changed"]
    assert commands == [["modprobe", "--", "ip_vs"], ["modprobe", "--", "ip_vs_rr"]]
    assert (root / LOAD).read_text() == HEADER + "ip_vs\nip_vs_rr\n"
    assert not (root / OPTIONS).exists()
    again, commands = run(root, name=["ip_vs", "ip_vs_rr", "tcp_bbr"])
    assert not again["changed"]
    assert commands == []


def test_params_drift_is_reported_then_reloaded_when_allowed(root):
    run(root, name="ip_vs", params={"conn_tab_bits": 12})
    assert (root / OPTIONS).read_text() == HEADER + "options ip_vs conn_tab_bits=12\n"
    drifted, commands = run(root, name="ip_vs", params={"conn_tab_bits": 18})
    assert commands == []
    assert drifted["drift"] == {"ip_vs": {"conn_tab_bits": {"wanted": "18", "current": "12"}}}
    assert drifted["changed"]  # the options line changed for the next boot
    assert (root / OPTIONS).read_text() == HEADER + "options ip_vs conn_tab_bits=18\n"
    reloaded, commands = run(root, name="ip_vs", params={"conn_tab_bits": 18}, reload_on_param_change=True)
    assert commands == [["rmmod", "--", "ip_vs"], ["modprobe", "--", "ip_vs", "conn_tab_bits=18"]]
    assert reloaded["modules"][0]["params"] == {"conn_tab_bits": "18"}


def test_absent_unloads_and_removes_the_owned_entries(root):
    run(root, name=["ip_vs", "ip_vs_rr"])
    result, commands = run(root, name="ip_vs_rr", state="absent")
    assert result["changed"]
    assert commands == [["rmmod", "--", "ip_vs_rr"]]
    assert (root / LOAD).read_text() == HEADER + "ip_vs\n"
    run(root, name="ip_vs", state="absent")
    assert not (root / LOAD).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"name": ["ip_vs", "no_such_mod"]}, "'no_such_mod' does not exist for the running kernel 6.1.0-test-amd64"),
        ({"name": ["ip_vs", "ip_vs_rr"], "params": {"a": 1}}, "params apply to one module"),
        ({"name": "tcp_bbr", "state": "absent"}, "built into kernel"),
        ({"name": "ip_vs", "modules_load_file": "/etc/other/x.conf"}, "modules_load_file must be a .conf file"),
        ({"name": "ip_vs", "params": {"a": "b c"}}, "without spaces"),
    ],
)
def test_bad_input_fails_before_any_change(root, args, message):
    with pytest.raises(KubeIpvsError) as caught:
        run(root, **args)
    assert message in caught.value.msg
    assert (root / "proc/modules").read_text() == ""
    assert not (root / LOAD).exists()


@pytest.mark.parametrize(("args", "message"), [
    ({"name": ["ip_vs\n"]}, "control character"),
    ({"name": ["ip_vs; rm"]}, "not a kernel module name"),
    ({"name": ["ip_vs"], "params": {"conn_tab_bits\n": 18}}, "parameter name"),
    ({"name": ["ip_vs"], "params": {"conn_tab_bits": "18 x=1"}}, "non-empty without spaces"),
    ({"name": ["ip_vs"], "params": {"conn_tab_bits": "1\x00"}}, "non-empty without spaces"),
    ({"name": ["ip_vs"], "params": {"conn_tab_bits": 1.5}}, "a string, an integer or a boolean"),
    ({"name": ["ip_vs"], "params": {"conn_tab_bits": {"a": 1}}}, "a string, an integer or a boolean"),
    ({"name": ["ip_vs"], "modules_load_file": "/etc/modules-load.d/x\ny.conf"}, "must be a .conf file"),
    ({"name": ["ip_vs"], "modprobe_file": "/etc/modprobe.d/-x.conf"}, "must be a .conf file"),
])
def test_hostile_names_and_parameters_change_nothing(root, args, message):
    with pytest.raises(KubeIpvsError, match=message):
        run(root, **args)
    assert (root / "proc/modules").read_text() == "" and not (root / "etc").exists()


def test_a_module_that_fails_to_load_unloads_the_ones_this_call_loaded(root):
    def run_failing(argv):
        return (1, "", "modprobe: FATAL: Module ip_vs_rr not found") if argv[2] == "ip_vs_rr" else None

    commands = []

    def fake_run_command(argv, data=None, binary_data=False, environ_update=None):
        commands.append(argv)
        failed = run_failing(argv)
        if failed:
            return failed
        proc = root / "proc/modules"
        if argv[0] == "modprobe":
            proc.write_text(proc.read_text() + f"{argv[2]} 1 0 - Live 0x0\n")
        else:
            proc.write_text("".join(line + "\n" for line in proc.read_text().splitlines()
                                    if line.split()[0] != argv[2]))
        return 0, "", ""

    with patch_module_args({"name": ["ip_vs", "ip_vs_rr"], "_ansible_check_mode": False}):
        module = kernel_module.build_module()
    module.run_command = fake_run_command
    module.get_bin_path = lambda name, required=False: name
    with pytest.raises(KubeIpvsError, match=r"FATAL.*this call.s changes were undone"):
        kernel_module.ensure_kernel_modules(module, root=str(root))
    assert commands == [["modprobe", "--", "ip_vs"], ["modprobe", "--", "ip_vs_rr"], ["rmmod", "--", "ip_vs"]]
    assert (root / "proc/modules").read_text() == "" and not (root / LOAD).exists()
