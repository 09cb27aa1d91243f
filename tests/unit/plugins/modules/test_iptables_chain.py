# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The iptables_chain module's flow with the system boundary (save, restore, unshare) faked."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import iptables_chain

SAVED = """*nat
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:FOREIGN - [0:0]
-A POSTROUTING -j FOREIGN
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A FOREIGN -j RETURN
COMMIT
"""


class FakeModule:
    def __init__(self, tmp_path, check_mode=False, outputs=None, **params):
        self.params = dict(
            {"table": "nat", "rules": None, "jumps": [], "family": "ipv4", "backend": "nft", "state": "present"},
            **params,
        )
        self.check_mode = check_mode
        self._diff = True
        self.tmpdir = str(tmp_path)
        self.outputs = outputs or {}
        self.commands = []

    def get_bin_path(self, name, required=False):
        return f"/usr/sbin/{name}"

    def run_command(self, argv, data=None, **_kwargs):
        tool = argv[0].rsplit("/", 1)[-1]
        self.commands.append((tool, data))
        return self.outputs.get(tool, (0, "", ""))


def tools(module):
    return [tool for tool, _data in module.commands]


def test_converged_chain_reads_once_and_writes_nothing(tmp_path):
    module = FakeModule(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x4000"],
    )
    result = iptables_chain.ensure_chain(module)
    assert not result["changed"] and result["commands"] == []
    assert tools(module) == ["iptables-nft-save"]


def test_check_mode_canonicalises_but_never_restores_on_the_node(tmp_path):
    scratch = "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000\nCOMMIT\n"
    module = FakeModule(
        tmp_path,
        check_mode=True,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (0, scratch, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x8000"],
    )
    result = iptables_chain.ensure_chain(module)
    assert result["changed"]
    assert tools(module) == ["iptables-nft-save", "unshare"]
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000" in result["diff"]["after"]
    assert "FOREIGN" not in "".join(result["commands"])


def test_change_is_one_noflush_restore(tmp_path):
    scratch = "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000\nCOMMIT\n"
    module = FakeModule(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (0, scratch, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x8000"],
    )
    iptables_chain.ensure_chain(module)
    assert tools(module) == ["iptables-nft-save", "unshare", "iptables-nft-restore"]
    assert module.commands[-1][1].splitlines() == [
        "*nat",
        ":KUBE-MARK-MASQ - [0:0]",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000",
        "COMMIT",
    ]


def test_rule_iptables_rejects_fails_before_the_node_is_touched(tmp_path):
    module = FakeModule(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (2, "", "iptables-restore: line 3 failed")},
        chain="KUBE-MARK-MASQ",
        rules=["-j DNAT --to-destination 10.0.0.1"],
    )
    with pytest.raises(KubeIpvsError, match="nothing was applied: iptables-restore: line 3 failed"):
        iptables_chain.ensure_chain(module)
    assert "iptables-nft-restore" not in tools(module)


def test_jump_from_a_chain_that_is_not_built_in_is_refused(tmp_path):
    module = FakeModule(
        tmp_path,
        chain="KUBE-MARK-MASQ",
        rules=[],
        jumps=[{"chain": "FOREIGN", "position": "first", "args": "", "comment": None}],
    )
    with pytest.raises(KubeIpvsError, match="built-in chains of nat are PREROUTING, INPUT, OUTPUT, POSTROUTING"):
        iptables_chain.ensure_chain(module)
    assert module.commands == []
