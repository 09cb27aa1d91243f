# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ipset module through its real AnsibleModule, the system boundary (the ipset and iptables-save
commands) faked."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import ipset as ipset_module
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build

SAVED = "create S hash:ip,port family inet hashsize 1024 maxelem 65536\nadd S 10.0.0.1,tcp:80\n"
HELP = "Supported set types:\n    hash:ip,port\t7\tx\n    hash:ip\t6\tx\n"


class IpsetTools(NodeTools):
    """ipset and iptables-save, answering from ``outputs`` (keyed by the ipset verb or the tool's name)."""

    def __init__(self, outputs=None):
        super().__init__(("ipset", "iptables-save", "ip6tables-save"))
        self.outputs = outputs or {}

    def record(self, argv, data):
        return (argv[1:] if argv[0].endswith("ipset") else argv, data)

    def answer(self, argv, data):
        key = argv[1] if argv[0].endswith("ipset") else argv[0].rsplit("/", 1)[-1]
        return self.outputs.get(key, (0, "", ""))


def ipset_task(check_mode=False, diff=True, outputs=None, **params):
    """The ipset module's real AnsibleModule for ``params``, its tools answering from ``outputs``."""
    return build(ipset_module, IpsetTools(outputs), check_mode=check_mode, diff=diff, **params)


def test_check_mode_reads_and_plans_but_never_restores():
    module = ipset_task(
        check_mode=True,
        outputs={"save": (0, SAVED, "")},
        name="S",
        type="hash:ip,port",
        members=["10.0.0.1,80", "10.0.0.2,udp:53"],
        exclusive=True,
    )
    result = ipset_module.ensure_sets(module)
    assert (result["changed"], result["method"], result["added_count"]) == (True, "incremental", 1)
    assert [argv[0] for argv, _data in module.commands] == ["save"]
    assert "10.0.0.2,udp:53" in result["diff"]["after"]


def test_converged_set_is_one_read_and_no_write():
    module = ipset_task(outputs={"save": (0, SAVED, "")}, name="S", type="hash:ip,port", members=["10.0.0.1,80"])
    result = ipset_module.ensure_sets(module)
    assert not result["changed"]
    assert module.commands == [(["save", "S"], None)]


def test_changes_go_in_one_restore_batch():
    module = ipset_task(
        outputs={"save": (0, SAVED, "")},
        name="S",
        type="hash:ip,port",
        members=["10.0.0.2,80", "10.0.0.3,80"],
        exclusive=True,
    )
    ipset_module.ensure_sets(module)
    restores = [data for argv, data in module.commands if argv[0] == "restore"]
    assert len(restores) == 1
    assert sorted(restores[0].splitlines()) == [
        "add S 10.0.0.2,tcp:80",
        "add S 10.0.0.3,tcp:80",
        "del S 10.0.0.1,tcp:80",
    ]


def test_destroy_is_refused_while_iptables_references_the_set():
    rule = "-A KUBE-POSTROUTING -m set --match-set S dst,dst,src -j MASQUERADE"
    module = ipset_task(
        outputs={"save": (0, SAVED, ""), "iptables-save": (0, f"*nat\n{rule}\nCOMMIT\n", "")}, name="S", state="absent"
    )
    with pytest.raises(KubeIpvsError, match="match-set S dst,dst,src") as error:
        ipset_module.ensure_sets(module)
    assert error.value.details["referencing_rules"] == [f"iptables-save nat: {rule}"]
    assert not any(argv[0] in ("destroy", "restore") for argv, _data in module.commands)


def test_type_the_node_does_not_know_fails_before_any_change():
    module = ipset_task(
        outputs={"save": (1, "", "ipset v7.17: The set with the given name does not exist"), "help": (0, HELP, "")},
        name="N",
        type="hash:net,iface",
        members=["10.0.0.0/8,eth0"],
    )
    with pytest.raises(KubeIpvsError, match="not supported by the ipset tool"):
        ipset_module.ensure_sets(module)
    assert not any(argv[0] == "restore" for argv, _data in module.commands)


def test_kernel_refusal_is_explained():
    module = ipset_task(
        outputs={
            "save": (0, SAVED, ""),
            "restore": (1, "", "ipset v7.17: Set cannot be destroyed: it is in use by a kernel component"),
        },
        name="S",
        state="absent",
    )
    with pytest.raises(KubeIpvsError, match="list:set"):
        ipset_module.ensure_sets(module)


ALL_SAVED = (
    "create FOREIGN hash:ip family inet hashsize 1024 maxelem 65536\nadd FOREIGN 192.0.2.1\n"
    "create A hash:ip,port family inet hashsize 1024 maxelem 65536\nadd A 10.0.0.1,tcp:80\n"
    "create P bitmap:port range 0-65535\n"
)


def bulk(check_mode=False, outputs=None, sets=(), **params):
    return ipset_task(check_mode=check_mode, outputs=outputs or {"save": (0, ALL_SAVED, "")}, sets=list(sets), **params)


def spec(name, **keys):
    """A set spec as a task writes it (the module's argument_spec fills in the other suboptions)."""
    return dict(name=name, **keys)


def test_many_sets_are_one_read_one_restore_and_results_per_set():
    module = bulk(
        sets=[
            spec("A", type="hash:ip,port", members=["10.0.0.2,80"]),  # one member added in place
            spec("P", type="bitmap:port", range="0-65535"),  # converged
            spec("N6", type="hash:ip", family="inet6", members=["2001:db8::1"]),  # created
            spec("B", type="hash:ip"),  # created, family inherited from the top level
        ],
        family="inet",
    )
    result = ipset_module.ensure_sets(module)
    assert [argv for argv, _data in module.commands if argv[0] == "save"] == [["save"]]
    restores = [data for argv, data in module.commands if argv[0] == "restore"]
    assert len(restores) == 1
    assert restores[0].splitlines() == [
        "add A 10.0.0.2,tcp:80",
        "create N6 hash:ip family inet6 hashsize 1024 maxelem 65536",
        "add N6 2001:db8::1",
        "create B hash:ip family inet hashsize 1024 maxelem 65536",
    ]
    assert [(one["name"], one["method"]) for one in result["sets"]] == [
        ("A", "incremental"),
        ("P", "none"),
        ("N6", "create"),
        ("B", "create"),
    ]
    assert result["changed_sets"] == ["A", "N6", "B"] and (result["added_count"], result["removed_count"]) == (2, 0)
    assert "method" not in result
    assert "# ipset N6\n" in result["diff"]["after"] and "# ipset P\n" not in result["diff"]["after"]
    assert result["diff"]["after"].endswith("# 1 of 4 sets unchanged\n")


def test_bulk_check_mode_reads_once_and_never_restores():
    module = bulk(check_mode=True, sets=[spec("A", type="hash:ip,port"), spec("C", type="hash:ip")])
    result = ipset_module.ensure_sets(module)
    assert result["changed_sets"] == ["C"]
    # one read of every set, the node's type list (C is new), and no write
    assert [argv[0] for argv, _data in module.commands] == ["save", "help"]


def test_every_invalid_spec_is_reported_and_nothing_is_read_or_changed():
    module = bulk(
        sets=[
            spec("A", type="hash:ip,port", members=["10.0.0.2,80"]),
            spec("A", type="hash:ip,port"),
            spec("BAD", type="hash:ip,port", members=["10.0.0.3"]),
            spec("NOTYPE"),
            spec("R", type="hash:ip", range="0-10"),
        ]
    )
    with pytest.raises(KubeIpvsError) as error:
        ipset_module.ensure_sets(module)
    problems = error.value.details["problems"]
    assert problems[0] == "set names listed more than once: A"
    assert "sets[2] (BAD)" in problems[1] and "10.0.0.3" in problems[1]
    assert "sets[3] (NOTYPE): type is required" in problems[2]
    assert "sets[4] (R)" in problems[3] and "range" in problems[3]
    assert module.commands == []


def test_bulk_destroy_of_a_referenced_set_is_refused_before_any_change():
    rule = "-A KUBE-POSTROUTING -m set --match-set A dst,dst -j MASQUERADE"
    module = bulk(
        outputs={"save": (0, ALL_SAVED, ""), "iptables-save": (0, f"*nat\n{rule}\nCOMMIT\n", "")},
        sets=[spec("C", type="hash:ip"), spec("A", state="absent"), spec("P", state="absent")],
    )
    with pytest.raises(KubeIpvsError, match="cannot destroy set A") as error:
        ipset_module.ensure_sets(module)
    assert error.value.details["referencing_rules"] == [f"iptables-save nat: {rule}"]
    assert not any(argv[0] == "restore" for argv, _data in module.commands)


def test_a_refused_line_names_its_set_and_what_was_applied_before_it():
    module = bulk(
        outputs={
            "save": (0, ALL_SAVED, ""),
            "restore": (1, "", "ipset v7.17: Error in line 3: Hash is full, cannot add more elements"),
        },
        sets=[spec("C", type="hash:ip", members=["10.0.0.1"]), spec("D", type="hash:ip", members=["10.0.0.2"])],
    )
    with pytest.raises(KubeIpvsError, match=r"set D failed \(create\).*changes to C .* were applied"):
        ipset_module.ensure_sets(module)


class FailingRestore(IpsetTools):
    """The first ``ipset restore`` stops at ``line`` with ``error``; later ones (the rollback) succeed."""

    def __init__(self, outputs, line, error="Hash is full, cannot add more elements"):
        super().__init__(outputs)
        self.failure = (1, "", f"ipset v7.17: Error in line {line}: {error}")

    def answer(self, argv, data):
        if argv[0].endswith("ipset") and argv[1] == "restore" and self.failure:
            failure, self.failure = self.failure, None
            return failure
        return super().answer(argv, data)


def test_a_refusal_rolls_back_every_set_changed_before_it():
    tools = FailingRestore({"save": (0, ALL_SAVED, "")}, line=3)
    module = build(ipset_module, tools, sets=[spec("A", type="hash:ip,port", members=["10.0.0.2,80"]),
                                              spec("C", type="hash:ip", members=["10.0.0.9"])])
    with pytest.raises(KubeIpvsError, match=r"set C failed .*rolled back, nothing changed"):
        ipset_module.ensure_sets(module)
    restores = [data for argv, data in module.commands if argv[0] == "restore"]
    assert restores[0].splitlines() == ["add A 10.0.0.2,tcp:80", "create C hash:ip family inet hashsize 1024 "
                                        "maxelem 65536", "add C 10.0.0.9"]
    # line 3 (add C ...) was refused: C goes again, A loses the member it gained
    assert restores[1].splitlines() == ["destroy C", "del A 10.0.0.2,tcp:80"]


def test_a_set_still_counted_by_the_kernel_is_never_destroyed():
    listing = "Name: A\nType: hash:ip,port\nReferences: 1\n"
    module = bulk(outputs={"save": (0, ALL_SAVED, ""), "list": (0, listing, "")},
                  sets=[spec("C", type="hash:ip"), spec("A", state="absent")])
    with pytest.raises(KubeIpvsError, match="cannot destroy set A: the kernel counts 1 reference"):
        ipset_module.ensure_sets(module)
    assert not any(argv[0] == "restore" for argv, _data in module.commands)


def test_an_option_the_kernel_refuses_in_the_scratch_namespace_changes_nothing():
    class WithUnshare(IpsetTools):
        def __init__(self):
            super().__init__({"save": (0, ALL_SAVED, "")})
            self.installed.add("unshare")

        def answer(self, argv, data):
            if argv[0].endswith("unshare"):
                return 1, "", "ipset v7.17: Error in line 1: Kernel error received: Cannot allocate memory"
            return super().answer(argv, data)

    tools = WithUnshare()
    module = build(ipset_module, tools, check_mode=True, sets=[spec("C", type="hash:ip", hashsize=2 ** 30)])
    with pytest.raises(KubeIpvsError, match=r"scratch network namespace.*Cannot allocate memory"):
        ipset_module.ensure_sets(module)
    scratch = [(argv, data) for argv, data in module.commands if argv[0].endswith("unshare")]
    assert scratch == [(["/usr/sbin/unshare", "--net", "--", "/usr/sbin/ipset", "restore"],
                        "create C hash:ip family inet hashsize 1073741824 maxelem 65536\n")]
