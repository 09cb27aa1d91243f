# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""sysctl end to end on a fake root: the real module code, a fake kernel behind run_command."""

from __future__ import annotations

import os

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import sysctl

RELEASE = "6.1.0-test-amd64"
DROPIN = "etc/sysctl.d/90-kubeipvs-node.conf"
LOAD = "etc/modules-load.d/kubeipvs-node.conf"
SYSCTL_HEADER = "# Managed by kubeipvs.node (sysctl). Do not edit: changes are overwritten.\n"
MODULES_HEADER = "# Managed by kubeipvs.node (kernel modules). Do not edit: changes are overwritten.\n"
# What loading a module adds to /proc/sys.
MODULE_KEYS = {"br_netfilter": {"net/bridge/bridge-nf-call-iptables": "1"}, "ip_vs": {"net/ipv4/vs/conntrack": "0"}}


class FakeUname:
    release = RELEASE


@pytest.fixture
def root(tmp_path, monkeypatch):
    base = tmp_path / "lib/modules" / RELEASE
    base.mkdir(parents=True)
    (base / "modules.builtin").write_text("")
    (base / "modules.dep").write_text("kernel/net/bridge/br_netfilter.ko:\nkernel/net/netfilter/ipvs/ip_vs.ko:\n")
    (tmp_path / "proc/sys/net/ipv4").mkdir(parents=True)
    (tmp_path / "proc/modules").write_text("")
    (tmp_path / "proc/sys/net/ipv4/ip_forward").write_text("0\n")
    (tmp_path / "proc/sys/net/ipv4/ip_local_port_range").write_text("32768\t60999\n")
    monkeypatch.setattr(os, "uname", lambda: FakeUname)
    return tmp_path


def run(root, check_mode=False, **args):
    commands = []

    def fake_run_command(argv, data=None, binary_data=False, environ_update=None):
        commands.append(argv)
        name = argv[2]
        (root / "proc/modules").write_text((root / "proc/modules").read_text() + f"{name} 1 0 - Live 0x0\n")
        for path, value in MODULE_KEYS[name].items():
            (root / "proc/sys" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "proc/sys" / path).write_text(value + "\n")
        return 0, "", ""

    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)):
        module = sysctl.build_module()
    module.run_command = fake_run_command
    module.get_bin_path = lambda name, required=False: name
    return sysctl.ensure_sysctl(module, root=str(root)), commands


def live(root, path):
    return (root / "proc/sys" / path).read_text()


def test_apply_and_persist_then_nothing_to_do(root):
    settings = {"net.ipv4.ip_forward": 1, "net.ipv4.ip_local_port_range": "32768 60999"}
    result, _commands = run(root, settings=settings)
    assert result["changed"]
    assert result["values"]["net.ipv4.ip_forward"] == {"before": "0", "after": "1"}
    assert result["diff"][0]["before"].startswith("net.ipv4.ip_forward = 0\n")
    assert live(root, "net/ipv4/ip_forward") == "1\n"
    assert (root / DROPIN).read_text() == (
        SYSCTL_HEADER + "net.ipv4.ip_forward = 1\nnet.ipv4.ip_local_port_range = 32768 60999\n"
    )
    again, _commands = run(root, settings=settings)
    assert not again["changed"]
    assert again["diff"] == []


def test_check_mode_reports_without_changing(root):
    result, _commands = run(root, check_mode=True, settings={"net.ipv4.ip_forward": 1})
    assert result["changed"]
    assert result["values"]["net.ipv4.ip_forward"] == {"before": "0", "after": "1"}
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert not (root / DROPIN).exists()


def test_apply_false_only_writes_the_file(root):
    result, _commands = run(root, settings={"net.ipv4.ip_forward": 1}, apply=False)
    assert result["changed"]
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert (root / DROPIN).exists()


def test_persist_false_sets_the_running_kernel_only(root):
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / DROPIN).write_text(SYSCTL_HEADER + "net.ipv4.ip_forward = 1\n")
    (root / "proc/sys/net/ipv4/ip_forward").write_text("1\n")
    result, _commands = run(root, settings={"net.ipv4.ip_forward": 0}, persist=False)
    assert result["changed"] and result["file"] is None
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert (root / DROPIN).read_text() == SYSCTL_HEADER + "net.ipv4.ip_forward = 1\n", "the file was changed"
    assert [d for d in result["diff"] if "sysctl.d" in str(d.get("before_header", ""))] == []
    assert not result.get("warnings")
    again, _commands = run(root, settings={"net.ipv4.ip_forward": 0}, persist=False)
    assert not again["changed"]


@pytest.mark.parametrize("args", [{"apply": False}, {"state": "absent"}])
def test_persist_false_needs_something_to_do(root, args):
    with pytest.raises(KubeIpvsError, match="persist: false"):
        run(root, settings={"net.ipv4.ip_forward": 1}, persist=False, **args)


def test_module_key_without_require_modules_names_the_module(root):
    with pytest.raises(KubeIpvsError) as caught:
        run(root, settings={"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1})
    assert "exists only once kernel module br_netfilter is loaded" in caught.value.msg
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert not (root / DROPIN).exists()


def test_require_modules_loads_and_persists_the_module(root):
    settings = {"net.bridge.bridge-nf-call-iptables": 1, "net.ipv4.vs.conntrack": 1}
    planned, commands = run(root, check_mode=True, settings=settings, require_modules=True)
    assert commands == []
    assert planned["modules_loaded"] == ["br_netfilter", "ip_vs"]
    assert planned["values"]["net.ipv4.vs.conntrack"] == {"before": None, "after": "1"}
    result, commands = run(root, settings=settings, require_modules=True)
    assert commands == [["modprobe", "--", "br_netfilter"], ["modprobe", "--", "ip_vs"]]
    assert result["values"]["net.ipv4.vs.conntrack"] == {"before": "0", "after": "1"}
    assert live(root, "net/ipv4/vs/conntrack") == "1\n"
    assert (root / LOAD).read_text() == MODULES_HEADER + "br_netfilter\nip_vs\n"
    again, commands = run(root, settings=settings, require_modules=True)
    assert (again["changed"], commands) == (False, [])


def test_without_require_modules_warns_when_boot_would_skip_the_key(root):
    run(root, settings={"net.ipv4.vs.conntrack": 1}, require_modules=True)
    (root / LOAD).unlink()
    with patch_module_args({"settings": {"net.ipv4.vs.conntrack": 1}}):
        module = sysctl.build_module()
    warnings = []
    module.warn = warnings.append
    sysctl.ensure_sysctl(module, root=str(root))
    assert any("need(s) kernel module ip_vs, which nothing loads at boot" in w for w in warnings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"net.ipv4.ip_forward": 1, "net.ipv4.no_such_key": 1}, "unknown sysctl key(s) net.ipv4.no_such_key"),
        ({"net.ipv4.ip_forward": "yes"}, "net.ipv4.ip_forward is numeric (the kernel prints '0')"),
        ({"net.ipv4.ip_forward": 1, "net.ipv4.ip_local_port_range": 1024}, "takes 2 integers"),
        ({"net.ipv4..x": 1}, "is not valid"),
    ],
)
def test_bad_input_changes_nothing(root, settings, message):
    with pytest.raises(KubeIpvsError) as caught:
        run(root, settings=settings)
    assert message in caught.value.msg
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert not (root / DROPIN).exists()


def test_absent_removes_the_file_only(root):
    run(root, settings={"net.ipv4.ip_forward": 1})
    result, _commands = run(root, state="absent")
    assert result["changed"]
    assert not (root / DROPIN).exists()
    assert live(root, "net/ipv4/ip_forward") == "1\n"
    again, _commands = run(root, state="absent")
    assert not again["changed"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"net.ipv4.ip_forward\n": 1}, "is not valid"),
    ({"net.ipv4\n.ip_forward": 1}, "is not valid"),
    ({"net.ipv4.ip_forward": "1\x00"}, "control character"),
    ({"net.ipv4.ip_forward": {"a": 1}}, "must be an integer, a string or a list"),
    ({"net.ipv4.ip_forward": 1.5}, "must be an integer, a string or a list"),
    ({"net.ipv4.ip_forward": float("inf")}, "must be an integer, a string or a list"),
    ({"net.ipv4.ip_local_port_range": [[1], 2]}, "not lists"),
])
def test_hostile_keys_and_values_change_nothing(root, settings, message):
    with pytest.raises(KubeIpvsError, match=message):
        run(root, settings=settings)
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert not (root / DROPIN).exists()


@pytest.mark.parametrize("file", ["/etc/sysctl.d/a\nb.conf", "/etc/sysctl.d/-x.conf", "/etc/sysctl.d/.conf",
                                  "/etc/sysctl.d/x.conf\n"])
def test_hostile_drop_in_names_change_nothing(root, file):
    with pytest.raises(KubeIpvsError, match=r"must be a \.conf file directly under"):
        run(root, settings={"net.ipv4.ip_forward": 1}, file=file)
    assert live(root, "net/ipv4/ip_forward") == "0\n"


def test_a_value_the_kernel_refuses_undoes_the_values_written_before_it(root, monkeypatch):
    real_write = sysctl.Sysctl.write

    def refusing(self, key, text):
        if key == "net.ipv4.ip_local_port_range":
            raise KubeIpvsError(f"cannot set sysctl {key} to {text!r}: Invalid argument", key=key)
        real_write(self, key, text)

    monkeypatch.setattr(sysctl.Sysctl, "write", refusing)
    with pytest.raises(KubeIpvsError, match=r"Invalid argument; this call's changes were undone \(sysctl "
                                            r"net\.ipv4\.ip_forward"):
        run(root, settings={"net.ipv4.ip_forward": 1, "net.ipv4.ip_local_port_range": "1024 65000"})
    assert live(root, "net/ipv4/ip_forward") == "0\n"
    assert not (root / DROPIN).exists()


def test_modules_loaded_for_keys_that_then_fail_are_unloaded_again(root, monkeypatch):
    real_write = sysctl.Sysctl.write

    def refusing(self, key, text):
        if key == "net.ipv4.vs.conntrack":
            raise KubeIpvsError(f"cannot set sysctl {key}: Invalid argument", key=key)
        real_write(self, key, text)

    monkeypatch.setattr(sysctl.Sysctl, "write", refusing)
    commands = []

    def fake_run_command(argv, data=None, binary_data=False, environ_update=None):
        commands.append(argv)
        modules = root / "proc/modules"
        if argv[0] == "rmmod":
            modules.write_text("".join(line + "\n" for line in modules.read_text().splitlines()
                                       if not line.startswith(argv[2] + " ")))
            return 0, "", ""
        modules.write_text(modules.read_text() + f"{argv[2]} 1 0 - Live 0x0\n")
        for path, value in MODULE_KEYS[argv[2]].items():
            (root / "proc/sys" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "proc/sys" / path).write_text(value + "\n")
        return 0, "", ""

    with patch_module_args({"settings": {"net.ipv4.vs.conntrack": 1}, "require_modules": True,
                            "_ansible_check_mode": False, "_ansible_diff": True}):
        module = sysctl.build_module()
    module.run_command = fake_run_command
    module.get_bin_path = lambda name, required=False: name
    with pytest.raises(KubeIpvsError, match="kernel modules loaded"):
        sysctl.ensure_sysctl(module, root=str(root))
    assert commands == [["modprobe", "--", "ip_vs"], ["rmmod", "--", "ip_vs"]]
    assert (root / "proc/modules").read_text() == "" and not (root / LOAD).exists()
