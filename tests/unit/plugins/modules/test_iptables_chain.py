# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The iptables_chain module through its real AnsibleModule, the system boundary (save, restore,
unshare, ipset) faked."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import iptables_chain
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build

SAVED = """*nat
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:FOREIGN - [0:0]
-A POSTROUTING -j FOREIGN
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A FOREIGN -j RETURN
COMMIT
"""


class IptablesTools(NodeTools):
    """Every tool present; each answers from ``outputs`` (keyed by the tool's name)."""

    def __init__(self, outputs=None):
        super().__init__()
        self.outputs = outputs or {}

    def record(self, argv, data):
        return (argv[0].rsplit("/", 1)[-1], data)

    def answer(self, argv, data):
        return self.outputs.get(argv[0].rsplit("/", 1)[-1], (0, "", ""))


def iptables_task(tmp_path, check_mode=False, outputs=None, node=None, **params):
    """The iptables_chain module's real AnsibleModule for ``params`` (nat table and the nft backend
    unless given), its tools ``node`` or answering from ``outputs``."""
    params = {"table": "nat", "backend": "nft", **params}
    return build(iptables_chain, node or IptablesTools(outputs), check_mode=check_mode, tmpdir=tmp_path, **params)


def tools(module):
    return [tool for tool, _data in module.commands]


def test_converged_chain_reads_once_and_writes_nothing(tmp_path):
    module = iptables_task(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x4000"],
    )
    result = iptables_chain.ensure_chains(module)
    assert not result["changed"] and result["commands"] == []
    assert tools(module) == ["iptables-nft-save"]


def test_check_mode_canonicalises_but_never_restores_on_the_node(tmp_path):
    scratch = "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000\nCOMMIT\n"
    module = iptables_task(
        tmp_path,
        check_mode=True,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (0, scratch, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x8000"],
    )
    result = iptables_chain.ensure_chains(module)
    assert result["changed"]
    assert tools(module) == ["iptables-nft-save", "unshare"]
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000" in result["diff"]["after"]
    assert "FOREIGN" not in "".join(result["commands"])


def test_change_is_one_noflush_restore(tmp_path):
    scratch = "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000\nCOMMIT\n"
    module = iptables_task(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (0, scratch, "")},
        chain="KUBE-MARK-MASQ",
        rules=["-j MARK --or-mark 0x8000"],
    )
    iptables_chain.ensure_chains(module)
    assert tools(module) == ["iptables-nft-save", "unshare", "iptables-nft-restore"]
    assert module.commands[-1][1].splitlines() == [
        "*nat",
        ":KUBE-MARK-MASQ - [0:0]",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000",
        "COMMIT",
    ]


def test_rule_iptables_rejects_fails_before_the_node_is_touched(tmp_path):
    module = iptables_task(
        tmp_path,
        outputs={"iptables-nft-save": (0, SAVED, ""), "unshare": (2, "", "iptables-restore: line 3 failed")},
        chain="KUBE-MARK-MASQ",
        rules=["-j DNAT --to-destination 10.0.0.1"],
    )
    with pytest.raises(KubeIpvsError, match="nothing was applied: iptables-restore: line 3 failed"):
        iptables_chain.ensure_chains(module)
    assert "iptables-nft-restore" not in tools(module)


class TwoTables(IptablesTools):
    """nat as SAVED, an empty filter; the scratch namespace prints back what it was given; the node's
    iptables refuses the filter transaction (a loop through a foreign chain the scratch one lacks)."""

    def answer(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        if tool == "iptables-nft-save":
            return 0, SAVED if argv[-1] == "nat" else "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", ""
        if tool == "unshare":
            with open(argv[-3]) as handle:
                return 0, handle.read(), ""
        if tool == "iptables-nft-restore" and data.startswith("*filter"):
            return 4, "", "line 3: RULE_APPEND failed (Too many links): rule in chain KUBE-F"
        return 0, "", ""


def test_a_table_refused_after_another_was_changed_rolls_that_one_back(tmp_path):
    module = iptables_task(tmp_path, node=TwoTables(), chains=[
        {"table": "nat", "chain": "KUBE-MARK-MASQ", "rules": ["-j MARK --or-mark 0x8000"],
         "jumps": [{"chain": "POSTROUTING", "position": "first", "args": "", "comment": None}]},
        {"table": "filter", "chain": "KUBE-F", "rules": ["-j RETURN"]}])
    with pytest.raises(KubeIpvsError, match=r"Too many links.*the changes applied before it to nat were rolled back"):
        iptables_chain.ensure_chains(module)
    restores = [data for tool, data in module.commands if tool == "iptables-nft-restore"]
    assert restores[0].splitlines() == ["*nat", ":KUBE-MARK-MASQ - [0:0]",
                                        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000",
                                        "-I POSTROUTING 1 -j KUBE-MARK-MASQ", "COMMIT"]
    assert restores[1].startswith("*filter")
    assert restores[2].splitlines() == ["*nat", ":KUBE-MARK-MASQ - [0:0]", "-D POSTROUTING -j KUBE-MARK-MASQ",
                                        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000", "COMMIT"]


def test_jump_from_a_chain_that_is_not_built_in_is_refused(tmp_path):
    module = iptables_task(
        tmp_path,
        chain="KUBE-MARK-MASQ",
        rules=[],
        jumps=[{"chain": "FOREIGN", "position": "first", "args": "", "comment": None}],
    )
    with pytest.raises(KubeIpvsError, match="built-in chains of nat are PREROUTING, INPUT, OUTPUT, POSTROUTING"):
        iptables_chain.ensure_chains(module)
    assert module.commands == []


SAVED_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\nCOMMIT\n"


class PerTableTools(IptablesTools):
    """iptables-nft-save answers per table (-t TABLE); the scratch round trip prints back the batch it
    was given (the rules are already in printed form), as iptables-save in the namespace would."""

    def record(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        if tool == "iptables-nft-save":
            return (f"save {argv[-1]}", data)
        if tool == "unshare":
            return (f"unshare {argv[-1]}", None)
        return super().record(argv, data)

    def answer(self, argv, data):
        tool = argv[0].rsplit("/", 1)[-1]
        if tool == "iptables-nft-save":
            return (0, {"nat": SAVED, "filter": SAVED_FILTER}[argv[-1]], "")
        if tool == "unshare":
            with open(argv[-3]) as rules_file:
                return (0, rules_file.read(), "")
        return super().answer(argv, data)


def chain(table, name, rules=None, jumps=(), state=None):
    """A chains entry as a task writes it (the module's argument_spec fills in what it leaves out)."""
    entry = {"table": table, "chain": name, "jumps": list(jumps)}
    entry.update({key: value for key, value in (("rules", rules), ("state", state)) if value is not None})
    return entry


def jump(parent, comment):
    return {"chain": parent, "position": "first", "args": "", "comment": comment}


def test_many_chains_read_each_table_once_and_restore_once_per_table(tmp_path):
    module = iptables_task(
        tmp_path,
        node=PerTableTools(),
        chains=[
            chain("nat", "KUBE-MARK-MASQ", ["-j MARK --or-mark 0x4000"]),  # converged
            chain("nat", "KUBE-SERVICES", jumps=[jump("OUTPUT", "portals"), jump("PREROUTING", "portals")]),
            chain("filter", "KUBE-FORWARD", jumps=[jump("FORWARD", "forwarding")]),
        ],
    )
    result = iptables_chain.ensure_chains(module)
    # every table is read and validated before the first one is written
    assert [tool for tool, _data in module.commands] == [
        "save nat",
        "unshare nat",
        "save filter",
        "unshare filter",
        "iptables-nft-restore",
        "iptables-nft-restore",
    ]
    nat_batch, filter_batch = (data for tool, data in module.commands if tool == "iptables-nft-restore")
    assert nat_batch.splitlines() == [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        "-I OUTPUT 1 -m comment --comment portals -j KUBE-SERVICES",
        "-I PREROUTING 1 -m comment --comment portals -j KUBE-SERVICES",
        "COMMIT",
    ]
    assert filter_batch.splitlines() == [
        "*filter",
        "-I FORWARD 1 -m comment --comment forwarding -j KUBE-FORWARD",
        "COMMIT",
    ]
    assert [one["changed"] for one in result["chains"]] == [False, True, True]
    assert "rules" not in result and result["backend"] == "nft"
    assert result["diff"]["after"].endswith("# 1 of 3 chains unchanged\n")
    assert "# nat/KUBE-MARK-MASQ" not in result["diff"]["after"]


def test_every_invalid_chain_spec_is_reported_before_anything_is_read(tmp_path):
    module = iptables_task(
        tmp_path,
        chains=[
            chain("nat", "KUBE-MARK-MASQ", ["-j MARK --or-mark 0x4000"]),
            chain("nat", "KUBE-MARK-MASQ", []),
            chain("nat", "POSTROUTING", []),
            chain("filter", "KUBE-X", ["--dport 80 -j ACCEPT"]),
            chain("nat", "KUBE-SERVICES", jumps=[jump("FORWARD", "x")]),
            chain("filter", "KUBE-Y", ["-j KUBE-OLD"]),
            chain("filter", "KUBE-OLD", state="absent"),
        ],
    )
    with pytest.raises(KubeIpvsError) as error:
        iptables_chain.ensure_chains(module)
    problems = error.value.details["problems"]
    assert len(problems) == 5, problems
    assert "chains[1] (nat/KUBE-MARK-MASQ): listed more than once" in problems
    assert any("built-in chain of nat" in problem for problem in problems)
    assert any("needs a protocol" in problem for problem in problems)
    assert any("jump from FORWARD is not possible" in problem for problem in problems)
    assert "filter/KUBE-Y: its rules jump to KUBE-OLD, which this call removes" in problems
    assert module.commands == []


def test_check_mode_uses_a_stand_in_for_a_set_the_node_does_not_have(tmp_path):
    scratch = (
        "*nat\n:KUBE-POSTROUTING - [0:0]\n-A KUBE-POSTROUTING -m set --match-set LB dst,dst,src -j MASQUERADE\nCOMMIT\n"
    )
    outputs = {
        "iptables-nft-save": (0, SAVED, ""),
        "ipset": (1, "", "ipset v7.17: The set with the given name does not exist"),
        "unshare": (0, scratch, ""),
    }
    args = {"chain": "KUBE-POSTROUTING", "rules": ["-m set --match-set LB dst,dst,src -j MASQUERADE"]}
    checked = iptables_task(tmp_path, check_mode=True, outputs=outputs, **args)
    result = iptables_chain.ensure_chains(checked)
    assert result["changed"] and tools(checked) == ["iptables-nft-save", "ipset", "unshare"]
    assert len(checked.warnings) == 1 and "ipset LB does not exist" in checked.warnings[0]

    real = iptables_task(tmp_path, outputs=outputs, **args)
    with pytest.raises(KubeIpvsError, match="ipset LB, which does not exist on the node"):
        iptables_chain.ensure_chains(real)
    assert tools(real) == ["iptables-nft-save", "ipset"]


def test_stand_in_sets_match_the_rule_dimension_and_family():
    from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _iptables as iptables_lib

    rules = [
        ("-m", "set", "--match-set", "LB", "dst,dst,src", "-j", "MASQUERADE"),
        ("-m", "set", "!", "--match-set", "IPS", "dst", "-j", "ACCEPT"),
        ("-m", "set", "--match-set", "PORTS", "dst,dst", "-j", "ACCEPT"),
    ]
    dimensions = iptables_lib.set_dimensions(rules)
    assert dimensions == {"LB": 3, "IPS": 1, "PORTS": 2}
    assert iptables_lib.stand_in_set_line("LB", 3, "ipv6") == "create LB hash:ip,port,ip family inet6"
    assert iptables_lib.stand_in_set_line("IPS", 1, "ipv4") == "create IPS hash:ip family inet"


@pytest.mark.parametrize(("rules", "message"), [
    (["-s 192.0.2.7\x00 -j DROP"], "control character"),
    (["-j RETURN\n-F FOREIGN"], "control character"),
    (["-j MARK --set-mark zz"], "a mark is a number"),
    (["-j MARK --or-mark -1"], "a mark is a number"),
    (["-j MARK --set-xmark 0x4000/0x1ffffffff"], "a mark is a number"),
    (["-m mark --mark -1 -j RETURN"], "a mark is a number"),
    (["-m set --match-set -exist src -j RETURN"], "--match-set"),
    (["-s fe80::1%eth0 -j RETURN"], "scope"),
])
def test_hostile_rules_fail_before_any_command(tmp_path, rules, message):
    module = iptables_task(tmp_path, outputs={"iptables-nft-save": (0, SAVED, "")}, chain="KUBE-X", rules=rules)
    with pytest.raises(KubeIpvsError, match=message):
        iptables_chain.ensure_chains(module)
    assert tools(module) == []


@pytest.mark.parametrize("params", [
    {"chain": "KUBE-X\n"}, {"chain": "-X"}, {"chain": "KUBE X"},
    {"chain": "KUBE-X", "jumps": [{"chain": "POSTROUTING", "args": "-j\x00"}]},
    {"chain": "KUBE-X", "jumps": [{"chain": "POSTROUTING", "comment": "a\nCOMMIT"}]},
])
def test_hostile_names_and_jumps_fail_before_any_command(tmp_path, params):
    module = iptables_task(tmp_path, outputs={"iptables-nft-save": (0, SAVED, "")}, **params)
    with pytest.raises(KubeIpvsError):
        iptables_chain.ensure_chains(module)
    assert tools(module) == []


def test_without_unshare_nothing_unvalidated_reaches_the_node(tmp_path):
    class NoUnshare(IptablesTools):
        def get_bin_path(self, name, required=False, opt_dirs=None):
            return None if name == "unshare" else super().get_bin_path(name, required, opt_dirs)

    module = iptables_task(tmp_path, node=NoUnshare({"iptables-nft-save": (0, SAVED, "")}), chain="KUBE-X",
                           rules=["-j RETURN"])
    with pytest.raises(KubeIpvsError, match=r"unshare tool .* is needed"):
        iptables_chain.ensure_chains(module)
    assert tools(module) == ["iptables-nft-save"]
