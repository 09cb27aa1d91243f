# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel module discovery, planning and persistence against a fake root directory, and modprobe runs."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._kmod import (
    KernelModules,
    Modprobe,
    apply_module_plan,
    plan_persistence,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import (
    plan_modules,
)

RELEASE = "6.1.0-test-amd64"


HEADER = "# Managed by kubeipvs.node (kernel modules). Do not edit: changes are overwritten.\n"


def write(root, path, text):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.fixture
def root(tmp_path):
    base = f"/lib/modules/{RELEASE}"
    write(
        tmp_path,
        f"{base}/modules.builtin",
        "kernel/net/ipv4/tcp_bbr.ko\nkernel/drivers/md/dm-mod.ko.xz\nkernel/fs/crypto/fscrypto.ko.zst\n",
    )
    write(
        tmp_path,
        f"{base}/modules.dep",
        "kernel/net/netfilter/nf_conntrack.ko.zst: kernel/lib/libcrc32c.ko.zst\n"
        "kernel/lib/libcrc32c.ko.zst:\n"
        "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.zst kernel/lib/libcrc32c.ko.zst\n"
        "kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz"
        " kernel/net/netfilter/nf_conntrack.ko.zst kernel/lib/libcrc32c.ko.zst\n"
        "kernel/net/netfilter/ipvs/ip_vs_ftp.ko: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n"
        "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko\n"
        "kernel/net/bridge/bridge.ko:\n",
    )
    write(tmp_path, f"{base}/modules.alias", "alias net-pf-7 bridge\nalias pci:v00008086d* e1000\nalias ipvs ip_vs\n")
    write(tmp_path, "/proc/modules", "ip_vs 188416 0 - Live 0x0\nnf_conntrack 188416 1 ip_vs, Live 0x0\n")
    write(tmp_path, "/sys/module/ip_vs/parameters/conn_tab_bits", "12\n")
    write(tmp_path, "/sys/module/nf_conntrack/parameters/hashsize", "65536\n")
    write(tmp_path, "/sys/module/nf_conntrack/parameters/acct", "N\n")
    write(tmp_path, "/sys/module/tcp_bbr/parameters/x", "1\n")
    return tmp_path


@pytest.mark.parametrize(
    ("asked", "resolved"),
    [
        ("ip_vs", ("ip_vs", "loadable")),
        ("ip-vs-rr", ("ip_vs_rr", "loadable")),  # '-' and '_' are the same for modprobe
        ("tcp_bbr", ("tcp_bbr", "builtin")),
        ("dm_mod", ("dm_mod", "builtin")),  # modules.builtin names it dm-mod.ko.xz
        ("fscrypto", ("fscrypto", "builtin")),  # .ko.zst in modules.builtin
        ("ipvs", ("ip_vs", "loadable")),  # plain alias
        ("net-pf-7", ("bridge", "loadable")),
    ],
)
def test_resolve_finds_builtin_loadable_and_aliases(root, asked, resolved):
    assert KernelModules(str(root), RELEASE).resolve(asked) == resolved


def test_resolve_unknown_module_names_kernel_and_path(root):
    with pytest.raises(KubeIpvsError) as caught:
        KernelModules(str(root), RELEASE).resolve("no_such_mod")
    assert "'no_such_mod' does not exist for the running kernel 6.1.0-test-amd64" in caught.value.msg
    assert caught.value.details == {"kernel_release": RELEASE, "searched": f"/lib/modules/{RELEASE}"}


def test_resolve_without_modules_dep_scans_the_tree(tmp_path):
    write(tmp_path, f"/lib/modules/{RELEASE}/kernel/net/netfilter/ipvs/ip_vs_sh.ko.zst", "")
    kmods = KernelModules(str(tmp_path), RELEASE)
    assert kmods.resolve("ip_vs_sh") == ("ip_vs_sh", "loadable")
    with pytest.raises(KubeIpvsError):
        kmods.resolve("ip_vs")


def test_loaded_params_and_presence(root):
    kmods = KernelModules(str(root), RELEASE)
    assert kmods.loaded() == {"ip_vs", "nf_conntrack"}
    assert kmods.params("nf_conntrack") == {"acct": "N", "hashsize": "65536"}
    assert kmods.params("ip_vs_rr") == {}
    assert kmods.is_present("tcp_bbr")
    assert not kmods.is_present("ip_vs_rr")


@pytest.mark.parametrize(
    ("names", "state", "params", "reload", "actions", "drift", "warned"),
    [
        (["ip_vs_rr"], "present", None, False, [("load", "ip_vs_rr", None)], {}, False),
        (["ip_vs", "nf_conntrack"], "present", None, False, [], {}, False),
        (["ip_vs"], "present", {"conn_tab_bits": 12}, False, [], {}, False),
        (
            ["ip_vs"],
            "present",
            {"conn_tab_bits": 18},
            False,
            [],
            {"ip_vs": {"conn_tab_bits": {"wanted": "18", "current": "12"}}},
            True,
        ),
        (
            ["ip_vs"],
            "present",
            {"conn_tab_bits": 18},
            True,
            [("reload", "ip_vs", {"conn_tab_bits": 18})],
            {"ip_vs": {"conn_tab_bits": {"wanted": "18", "current": "12"}}},
            False,
        ),
        (["ip_vs"], "present", {"not_visible": 1}, False, [], {}, False),  # unreadable: no drift
        (["tcp_bbr"], "present", None, False, [], {}, False),  # built in: nothing to load
        (["tcp_bbr"], "present", {"x": 2}, True, [], {"tcp_bbr": {"x": {"wanted": "2", "current": "1"}}}, True),
        (["ip_vs"], "absent", None, False, [("unload", "ip_vs", None)], {}, False),
        (["ip_vs_rr"], "absent", None, False, [], {}, False),
        (["ip_vs_rr", "ip-vs-rr", "ipvs", "ip_vs"], "present", None, False, [("load", "ip_vs_rr", None)], {}, False),
    ],
)
def test_plan_modules(root, names, state, params, reload, actions, drift, warned):
    plan = plan_modules(KernelModules(str(root), RELEASE), names, state, params, reload)
    assert plan.actions == actions
    assert plan.drift == drift
    assert bool(plan.warnings) is warned


def test_plan_modules_refuses_to_unload_builtin(root):
    with pytest.raises(KubeIpvsError, match="built into kernel"):
        plan_modules(KernelModules(str(root), RELEASE), ["tcp_bbr"], "absent", None, False)


def test_plan_modules_resolves_all_names_before_planning(root):
    with pytest.raises(KubeIpvsError, match="nope"):
        plan_modules(KernelModules(str(root), RELEASE), ["ip_vs_rr", "nope"], "present", None, False)


def test_live_diff_shows_each_module(root):
    plan = plan_modules(KernelModules(str(root), RELEASE), ["ip_vs_rr", "ip_vs", "tcp_bbr"], "present", None, False)
    diff = plan.live_diff()
    assert diff["before"] == "ip_vs: loaded\nip_vs_rr: absent\ntcp_bbr: builtin\n"
    assert diff["after"] == "ip_vs: loaded\nip_vs_rr: loaded\ntcp_bbr: builtin\n"


LOAD = "/etc/modules-load.d/kubeipvs-node.conf"


OPTIONS = "/etc/modprobe.d/kubeipvs-node.conf"


@pytest.mark.parametrize(
    ("load_before", "options_before", "present", "absent", "update", "merge", "load_after", "options_after"),
    [
        # fresh node
        (None, None, ["ip_vs", "ip_vs_rr"], (), {}, False, HEADER + "ip_vs\nip_vs_rr\n", None),
        # another task's entries stay; the list is sorted and without duplicates
        (HEADER + "nf_conntrack\nip_vs\n", None, ["ip_vs", "br_netfilter"], (), {}, False,
         HEADER + "br_netfilter\nip_vs\nnf_conntrack\n", None),
        # hand edits in the owned file are rendered away, comments too
        ("# mine\nip_vs # keep me\n", None, ["ip_vs"], (), {}, False, HEADER + "ip_vs\n", None),
        # the last entry removed: the file goes
        (HEADER + "ip_vs_ftp\n", HEADER + "options ip_vs_ftp ports=21\n", (), ["ip_vs_ftp"], {"ip_vs_ftp": None},
         False, None, None),
        # options replace the module's line, other modules' lines stay
        (None, HEADER + "options ip_vs conn_tab_bits=12\noptions nf_conntrack acct=1\n", ["ip_vs"], (),
         {"ip_vs": {"conn_tab_bits": 18}}, False, HEADER + "ip_vs\n",
         HEADER + "options ip_vs conn_tab_bits=18\noptions nf_conntrack acct=1\n"),
        # merge keeps the module's other parameters (conntrack's hashsize next to a user's acct)
        (None, HEADER + "options nf_conntrack acct=1 hashsize=1024\n", ["nf_conntrack"], (),
         {"nf_conntrack": {"hashsize": 32768}}, True, HEADER + "nf_conntrack\n",
         HEADER + "options nf_conntrack acct=1 hashsize=32768\n"),
        # {} drops the line
        (None, HEADER + "options ip_vs conn_tab_bits=12\n", (), (), {"ip_vs": {}}, False, None, None),
        # booleans are written as modprobe understands them
        (None, None, (), (), {"nf_conntrack": {"acct": True}}, False, None, HEADER + "options nf_conntrack acct=1\n"),
    ],
)
def test_plan_persistence(root, load_before, options_before, present, absent, update, merge, load_after, options_after):
    if load_before is not None:
        write(root, LOAD, load_before)
    if options_before is not None:
        write(root, OPTIONS, options_before)
    load, options = plan_persistence(KernelModules(str(root), RELEASE), LOAD, OPTIONS, present, absent, update, merge)
    assert (load.before, load.after) == (load_before, load_after)
    assert (options.before, options.after) == (options_before, options_after)


def test_boot_modules_follow_dependencies_and_debian_etc_modules(root):
    write(root, "/etc/modules", "# /etc/modules\nbr_netfilter\n")
    write(root, "/usr/lib/modules-load.d/ipvs.conf", "; comment\nip_vs_rr\n")
    write(root, "/etc/modules-load.d/ignored.txt", "ip_vs_ftp\n")
    assert KernelModules(str(root), RELEASE).boot_modules() == {
        "br_netfilter", "bridge", "ip_vs_rr", "ip_vs", "nf_conntrack", "libcrc32c",
    }


class FakeKernel:
    """modprobe/rmmod that change the fake /proc/modules, as the kernel would."""

    def __init__(self, root, stderr="", rc=0, honour=True):
        self.root = root
        self.calls = []
        self.stderr = stderr
        self.rc = rc
        self.honour = honour

    def __call__(self, argv):
        self.calls.append(argv)
        proc = self.root / "proc/modules"
        lines = proc.read_text().splitlines()
        name = argv[2]
        if self.honour and self.rc == 0:
            if argv[0] == "modprobe":
                lines.append(f"{name} 1 0 - Live 0x0")
            else:
                lines = [line for line in lines if not line.startswith(name + " ")]
            proc.write_text("\n".join(lines) + "\n")
        return self.rc, "", self.stderr


@pytest.mark.parametrize(
    ("names", "state", "params", "calls"),
    [
        (["ip_vs_rr"], "present", None, [["modprobe", "--", "ip_vs_rr"]]),
        (
            ["ip_vs"],
            "present",
            {"conn_tab_bits": 18},
            [["rmmod", "--", "ip_vs"], ["modprobe", "--", "ip_vs", "conn_tab_bits=18"]],
        ),
        (["ip_vs"], "absent", None, [["rmmod", "--", "ip_vs"]]),
    ],
)
def test_apply_module_plan_runs_the_planned_commands(root, names, state, params, calls):
    kmods = KernelModules(str(root), RELEASE)
    plan = plan_modules(kmods, names, state, params, True)
    kernel = FakeKernel(root)
    apply_module_plan(kmods, Modprobe(kernel, "modprobe", "rmmod"), plan)
    assert kernel.calls == calls


def test_apply_module_plan_checks_proc_modules(root):
    kmods = KernelModules(str(root), RELEASE)
    plan = plan_modules(kmods, ["ip_vs_rr"], "present", None, False)
    with pytest.raises(KubeIpvsError, match="/proc/modules disagrees"):
        apply_module_plan(kmods, Modprobe(FakeKernel(root, honour=False), "modprobe"), plan)


@pytest.mark.parametrize(
    ("rc", "stderr", "fails", "warnings"),
    [
        (0, "", False, 0),
        (1, "modprobe: FATAL: Module x not found in directory /lib/modules/6.1", True, 0),
        (0, "modprobe: ERROR: could not insert 'x': Operation not permitted", True, 0),  # stderr decides too
        (0, "modprobe: WARNING: Module x is deprecated", False, 1),
    ],
)
def test_modprobe_checks_rc_and_stderr(root, rc, stderr, fails, warnings):
    modprobe = Modprobe(FakeKernel(root, stderr=stderr, rc=rc), "modprobe")
    if fails:
        with pytest.raises(KubeIpvsError) as caught:
            modprobe.load("x")
        assert stderr in caught.value.msg
    else:
        modprobe.load("x")
    assert len(modprobe.warnings) == warnings
