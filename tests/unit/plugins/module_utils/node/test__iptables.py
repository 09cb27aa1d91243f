# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables backends: which save/restore commands, which backend holds a table, reading a table."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node import _iptables as ipt

KUBE_NAT = "*nat\n:POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\nCOMMIT\n"


EMPTY_NAT = "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


class FakeNode:
    """``which`` finds the files created in ``bin``; ``run`` answers save commands from ``tables``."""

    def __init__(self, home, commands=(), tables=None, legacy_loaded=None, version="iptables v1.8.9"):
        self.bin = home / "bin"
        self.bin.mkdir(parents=True)
        for name in commands:
            (self.bin / name).write_text("")
        self.proc_root = str(home / "root")
        if legacy_loaded is not None:
            (home / "root" / "proc" / "net").mkdir(parents=True)
            (home / "root" / "proc" / "net" / "ip_tables_names").write_text("\n".join(legacy_loaded))
        self.tables = tables or {}  # save command name -> (rc, out, err)
        self.version = version
        self.calls = []

    def which(self, name):
        path = self.bin / name
        return str(path) if path.exists() or path.is_symlink() else None

    def run(self, argv):
        name = argv[0].rsplit("/", 1)[-1]
        self.calls.append([name, *argv[1:]])
        if argv[1:] == ["--version"]:
            return 0, self.version, ""
        return self.tables.get(name, (0, "", ""))


@pytest.fixture
def home(tmp_path_factory):
    """A folder for a fake node's commands and /proc."""
    return tmp_path_factory.mktemp("node")


NFT_TOOLS = ("iptables-nft-save", "iptables-nft-restore")


LEGACY_TOOLS = ("iptables-legacy-save", "iptables-legacy-restore")


def names(tools):
    return [None if path is None else path.rsplit("/", 1)[-1] for path in (tools.save, tools.restore)]


@pytest.mark.parametrize(
    ("commands", "backend", "family", "plain_fallback", "found"),
    [
        ((*NFT_TOOLS, "iptables-save", "iptables-restore"), "nft", "ipv4", True, list(NFT_TOOLS)),
        (("iptables-save", "iptables-restore"), "nft", "ipv4", True, ["iptables-save", "iptables-restore"]),
        (("iptables-save", "iptables-restore"), "legacy", "ipv4", True, ["iptables-save", "iptables-restore"]),
        (("iptables-save", "iptables-restore"), "legacy", "ipv4", False, [None, None]),
        (("ip6tables-legacy-save", "ip6tables-legacy-restore", "iptables-legacy-save"), "legacy", "ipv6", False,
         ["ip6tables-legacy-save", "ip6tables-legacy-restore"]),
    ],
)
def test_backend_tools_prefer_the_backends_own_names(home, commands, backend, family, plain_fallback, found):
    node = FakeNode(home, commands)
    tools = ipt.BackendTools(node.which, backend, family, plain_fallback=plain_fallback)
    assert (tools.backend, tools.family, names(tools)) == (backend, family, found)


def test_backend_tools_require_names_what_is_missing(home):
    node = FakeNode(home, ("ip6tables-nft-save",))
    message = r"^ip6tables-save and ip6tables-restore are needed on the node \(nft backend\)$"
    with pytest.raises(KubeIpvsError, match=message):
        ipt.BackendTools(node.which, "nft", "ipv6").require()
    complete = FakeNode(home / "complete", NFT_TOOLS)
    tools = ipt.BackendTools(complete.which, "nft", "ipv4")
    assert tools.require() is tools


def test_legacy_tables_are_read_below_the_proc_root(home):
    node = FakeNode(home, legacy_loaded=["filter", "nat"])
    assert ipt.legacy_tables("ipv4", node.proc_root) == ["filter", "nat"]
    assert ipt.legacy_tables("ipv6", node.proc_root) == []  # ip6_tables not loaded: no file
    assert ipt.legacy_tables("ipv4", str(home / "nowhere")) == []


@pytest.mark.parametrize(
    ("target", "version", "expected"),
    [
        ("xtables-legacy-multi", "", "legacy"),
        ("xtables-nft-multi", "iptables v1.8.9 (legacy)", "nft"),  # the link decides without running it
        ("iptables-binary", "iptables v1.8.4 (legacy)", "legacy"),
        ("iptables-binary", "iptables v1.8.9 (nf_tables)", "nft"),
        ("iptables-binary", "iptables v1.4.21", "nft"),
    ],
)
def test_default_backend_follows_the_iptables_link_then_its_version(home, target, version, expected):
    node = FakeNode(home, (target,), version=version)
    (node.bin / "iptables").symlink_to(node.bin / target)
    assert ipt.default_backend(node.which, node.run, "ipv4") == expected
    assert node.calls == ([] if "multi" in target else [["iptables", "--version"]])


def test_default_backend_reads_the_file_name_not_the_directories(tmp_path):
    # An install under a directory named after the other backend must not flip the answer.
    node = FakeNode(tmp_path / "opt-legacy-tools", ("xtables-nft-multi",), version="iptables v1.8.9 (legacy)")
    (node.bin / "iptables").symlink_to(node.bin / "xtables-nft-multi")
    assert ipt.default_backend(node.which, node.run, "ipv4") == "nft"


def test_default_backend_without_iptables_fails(home):
    node = FakeNode(home, ("iptables",))
    with pytest.raises(KubeIpvsError, match=r"^iptables is not installed on the node$"):
        ipt.default_backend(node.which, node.run, "ipv6")


def test_read_table_treats_a_missing_table_as_empty_and_reports_other_failures(home):
    node = FakeNode(home, NFT_TOOLS, tables={"iptables-nft-save": (0, KUBE_NAT, "")})
    tools = ipt.BackendTools(node.which, "nft", "ipv4")
    assert list(ipt.read_table(node.run, tools, "nat").chains) == ["POSTROUTING", "KUBE-POSTROUTING"]
    assert node.calls == [["iptables-nft-save", "-t", "nat"]]
    node.tables["iptables-nft-save"] = (1, "", "iptables-save: Table does not exist (do you need to insmod?)\n")
    assert ipt.read_table(node.run, tools, "raw").chains == {}
    node.tables["iptables-nft-save"] = (4, "", "Permission denied\n")
    with pytest.raises(KubeIpvsError, match=r"iptables-nft-save -t nat failed: Permission denied$") as error:
        ipt.read_table(node.run, tools, "nat")
    assert error.value.details == {"rc": 4}


def auto_node(home, nft_out, legacy_out, legacy_loaded, commands=(*NFT_TOOLS, *LEGACY_TOOLS)):
    node = FakeNode(
        home,
        (*commands, "xtables-nft-multi"),
        tables={"iptables-nft-save": (0, nft_out, ""), "iptables-legacy-save": (0, legacy_out, "")},
        legacy_loaded=legacy_loaded,
    )
    (node.bin / "iptables").symlink_to(node.bin / "xtables-nft-multi")
    return node


def choose(node, names=(), backend="auto"):
    tools, state = ipt.choose_backend(node.which, node.run, "ipv4", backend, "nat", list(names), node.proc_root)
    return tools.backend, list(state.chains), [call[0] for call in node.calls]


def test_auto_keeps_the_default_backend_when_it_holds_kube_chains(home):
    node = auto_node(home, KUBE_NAT, KUBE_NAT, legacy_loaded=["nat"])
    assert choose(node) == ("nft", ["POSTROUTING", "KUBE-POSTROUTING"], ["iptables-nft-save"])


def test_auto_never_reads_a_legacy_table_the_kernel_does_not_have(home):
    node = auto_node(home, EMPTY_NAT, KUBE_NAT, legacy_loaded=["filter"])
    assert choose(node) == ("nft", ["POSTROUTING"], ["iptables-nft-save"])


def test_auto_takes_the_legacy_backend_that_holds_kube_chains_or_a_named_chain(home):
    node = auto_node(home, EMPTY_NAT, KUBE_NAT, legacy_loaded=["filter", "nat"])
    read_both = ["iptables-nft-save", "iptables-legacy-save"]
    assert choose(node) == ("legacy", ["POSTROUTING", "KUBE-POSTROUTING"], read_both)
    named = "*nat\n:EDGE - [0:0]\nCOMMIT\n"
    node = auto_node(home / "named", EMPTY_NAT, named, legacy_loaded=["nat"])
    assert choose(node, names=["EDGE"])[0] == "legacy"
    assert choose(node, names=["OTHER"])[0] == "nft"


def test_auto_does_not_let_the_plain_names_stand_in_for_the_other_backend(home):
    node = auto_node(home, EMPTY_NAT, KUBE_NAT, legacy_loaded=["nat"],
                     commands=(*NFT_TOOLS, "iptables-save", "iptables-restore"))
    assert choose(node) == ("nft", ["POSTROUTING"], ["iptables-nft-save"])


def test_an_explicit_backend_is_used_as_given(home):
    node = auto_node(home, KUBE_NAT, EMPTY_NAT, legacy_loaded=[])
    # Explicitly asked for: read even though the kernel lists no legacy table.
    assert choose(node, backend="legacy") == ("legacy", ["POSTROUTING"], ["iptables-legacy-save"])
    node = FakeNode(home / "bare", ())
    message = r"^iptables-save and iptables-restore are needed on the node \(legacy backend\)$"
    with pytest.raises(KubeIpvsError, match=message):
        choose(node, backend="legacy")
