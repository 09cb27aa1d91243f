# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""/proc/sys reads and writes, planning and shadowing drop-ins against a fake root directory."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._sysctl import Sysctl, probe_in_scratch
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import (
    missing_keys,
    plan_live,
)


def write(root, path, text):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.fixture
def root(tmp_path):
    write(tmp_path, "/proc/sys/net/ipv4/ip_forward", "0\n")
    write(tmp_path, "/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
    write(tmp_path, "/proc/sys/net/ipv4/tcp_congestion_control", "cubic\n")
    write(tmp_path, "/proc/sys/net/ipv4/conf/eth0.100/rp_filter", "2\n")
    write(tmp_path, "/proc/sys/net/ipv4/vs/conntrack", "0\n")
    return tmp_path


def test_read_folds_kernel_whitespace(root):
    sysctl = Sysctl(str(root))
    assert sysctl.read("net.ipv4.ip_local_port_range") == "32768 60999"
    assert sysctl.read("net/ipv4/conf/eth0.100/rp_filter") == "2"
    assert sysctl.read("net.ipv4.no_such_key") is None
    assert sysctl.read("net.ipv4.ip_forward.deeper") is None
    with pytest.raises(KubeIpvsError, match="is a directory of keys"):
        sysctl.read("net.ipv4")


def test_write_reads_back(root):
    sysctl = Sysctl(str(root))
    sysctl.write("net.ipv4.ip_local_port_range", "1024 65000")
    assert (root / "proc/sys/net/ipv4/ip_local_port_range").read_text() == "1024 65000\n"


def test_write_into_missing_key_is_a_clear_error(root):
    with pytest.raises(KubeIpvsError, match=r"cannot set sysctl net\.ipv4\.nope to .1.: No such file"):
        Sysctl(str(root)).write("net.ipv4.nope", "1")


def test_plan_live_is_idempotent_on_the_kernel_format(root):
    settings = {"net.ipv4.ip_forward": 1, "net.ipv4.ip_local_port_range": [32768, 60999]}
    plan, wanted = plan_live(Sysctl(str(root)), settings, apply=True)
    assert wanted == {"net.ipv4.ip_forward": "1", "net.ipv4.ip_local_port_range": "32768 60999"}
    assert plan.writes == {"net.ipv4.ip_forward": "1"}  # the tab-separated vector already matches
    assert plan.live_diff()["before"] == "net.ipv4.ip_forward = 0\nnet.ipv4.ip_local_port_range = 32768 60999\n"
    assert plan.live_diff()["after"] == "net.ipv4.ip_forward = 1\nnet.ipv4.ip_local_port_range = 32768 60999\n"


def test_plan_live_without_apply_keeps_live_values(root):
    plan, wanted = plan_live(Sysctl(str(root)), {"net.ipv4.ip_forward": 1}, apply=False)
    assert plan.writes == {}
    assert plan.after == {"net.ipv4.ip_forward": "0"}
    assert wanted == {"net.ipv4.ip_forward": "1"}


def test_plan_live_validates_every_key_before_returning(root):
    # The first key is fine, the second is not: the plan never exists, so nothing is written.
    with pytest.raises(KubeIpvsError, match="ip_forward is numeric"):
        plan_live(Sysctl(str(root)), {"net.ipv4.tcp_congestion_control": "bbr", "net.ipv4.ip_forward": "on"}, True)
    assert (root / "proc/sys/net/ipv4/tcp_congestion_control").read_text() == "cubic\n"


def test_missing_keys_splits_module_dependent_from_unknown(root):
    keys = [
        "net.ipv4.ip_forward",
        "net.ipv4.vs.conntrack",  # exists (ip_vs loaded)
        "net.ipv4.vs.expire_nodest_conn",  # would come with ip_vs... but ip_vs is loaded: caller decides
        "net.bridge.bridge-nf-call-iptables",
        "net.netfilter.nf_conntrack_max",
        "net.ipv4.typo",
    ]
    by_module, unknown = missing_keys(Sysctl(str(root)), keys)
    assert by_module == {
        "ip_vs": ["net.ipv4.vs.expire_nodest_conn"],
        "br_netfilter": ["net.bridge.bridge-nf-call-iptables"],
        "nf_conntrack": ["net.netfilter.nf_conntrack_max"],
    }
    assert unknown == ["net.ipv4.typo"]


@pytest.mark.parametrize(
    ("files", "warned"),
    [
        ({"/etc/sysctl.d/99-sysctl.conf": "net.ipv4.ip_forward = 0\n"}, ["/etc/sysctl.d/99-sysctl.conf"]),
        ({"/etc/sysctl.d/99-sysctl.conf": "net.ipv4.ip_forward = 1\n"}, []),  # same value: harmless
        ({"/etc/sysctl.d/10-early.conf": "net.ipv4.ip_forward = 0\n"}, []),  # earlier: ours wins
        ({"/usr/lib/sysctl.d/99-vendor.conf": "net.ipv4.ip_forward=0\n"}, ["/usr/lib/sysctl.d/99-vendor.conf"]),
        # /etc hides the vendor file of the same name
        (
            {"/usr/lib/sysctl.d/99-vendor.conf": "net.ipv4.ip_forward=0\n", "/etc/sysctl.d/99-vendor.conf": "# off\n"},
            [],
        ),
        ({"/etc/sysctl.d/99-x.txt": "net.ipv4.ip_forward = 0\n"}, []),  # not a .conf: not read
    ],
)
def test_shadowing_warns_about_later_files(tmp_path, files, warned):
    for path, text in files.items():
        write(tmp_path, path, text)
    own = "/etc/sysctl.d/90-kubeipvs-node.conf"
    write(tmp_path, own, "net.ipv4.ip_forward = 1\n")
    warnings = Sysctl(str(tmp_path)).shadowing(own, {"net.ipv4.ip_forward": "1"})
    assert [w.split(" ")[0] for w in warnings] == warned


class ProbeCommands:
    """``which`` and ``run`` of node/_commands.Commands; the scratch namespace answers ``answer``."""

    def __init__(self, answer, installed=("unshare",)):
        self.answer = answer
        self.installed = installed
        self.calls = []

    def which(self, name):
        return f"/usr/bin/{name}" if name in self.installed else None

    def run(self, argv, data=None):
        self.calls.append(argv)
        return 0, self.answer, ""


def test_a_value_the_scratch_namespace_refuses_or_clamps_fails_before_the_node_is_touched():
    commands = ProbeCommands("errno 22\nok 5\nerrno 13\n")
    writes = {"net.ipv4.ip_local_port_range": "9 8", "net.core.somaxconn": "4", "net.ipv4.tcp_mem": "1 2 3",
              "kernel.pid_max": "7"}
    with pytest.raises(KubeIpvsError) as caught:
        probe_in_scratch(commands, "/usr/bin/python3", writes)
    assert caught.value.details["problems"] == [
        "sysctl net.ipv4.ip_local_port_range = '9 8': Invalid argument",
        "sysctl net.core.somaxconn = '4': the kernel keeps '5' instead"]
    argv = commands.calls[0]
    assert argv[:5] == ["/usr/bin/unshare", "--net", "--", "/usr/bin/python3", "-c"]
    # only per-namespace keys are tried; a permission error proves nothing
    assert argv[6:] == ["/proc/sys/net/ipv4/ip_local_port_range", "9 8", "/proc/sys/net/core/somaxconn", "4",
                        "/proc/sys/net/ipv4/tcp_mem", "1 2 3"]


def test_without_unshare_the_probe_is_left_to_the_write_and_its_undo():
    commands = ProbeCommands("errno 22\n", installed=())
    probe_in_scratch(commands, "/usr/bin/python3", {"net.ipv4.ip_forward": "7"})
    assert commands.calls == []
