# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables_table through its real AnsibleModule with the system boundary faked: ``nft`` and
``unshare`` answer from an in-memory "kernel" that stores a table as the JSON and text nft would
print; the real kernel is proven in tests/integration/test_nftables_table_netns.py."""

from __future__ import annotations

import json

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._nftables import CANARY_TOUCHED, SCRATCH_SEPARATOR
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import (
    canonical_table,
    check_content,
    listing_comments,
    replace_batch,
    validate_table,
)
from ansible_collections.kubeipvs.node.plugins.modules import nftables_table
from ansible_collections.kubeipvs.node.tests.unit.plugins.modules.helpers import NodeTools, build, run_main

CONTENT = "chain input {\n\ttype filter hook input priority 0; policy accept;\n\tcounter\n}\n"


def listing(rules=("counter",), handle=1, packets=0, comment=None):
    """(json, text) of table ip demo with one base chain, as nft prints them."""
    items = [{"metainfo": {"version": "1.0.6"}},
             {"table": {"family": "ip", "name": "demo", "handle": handle}},
             {"chain": {"family": "ip", "table": "demo", "name": "input", "handle": handle + 1, "type": "filter",
                        "hook": "input", "prio": 0, "policy": "accept"}}]
    for index, rule in enumerate(rules):
        expr = ([{"counter": {"packets": packets, "bytes": packets * 60}}] if rule == "counter"
                else [{"drop": None}])
        items.append({"rule": {"family": "ip", "table": "demo", "chain": "input", "handle": handle + 2 + index,
                               "expr": expr}})
    comment_line = f'\t\tcomment "{comment}"\n' if comment else ""
    text = ("table ip demo {\n\tchain input {\n" + comment_line
            + "\t\ttype filter hook input priority filter; policy accept;\n"
            + "".join(f"\t\t{rule}\n" for rule in rules) + "\t}\n}\n")
    return json.dumps({"nftables": items}), text


TABLES = json.dumps({"nftables": [{"table": {"family": "ip", "name": "demo"}}]})


class NftTools(NodeTools):
    """``nft`` and ``unshare``: ``live`` is the node's table (json, text) or None, ``scratch`` what the
    scratch namespace reads back after loading the batch (or an (rc, err) failure), ``tables`` what
    it lists."""

    def __init__(self, live=None, scratch=None, after=None, tables=TABLES):
        super().__init__(("nft", "unshare"))
        self.live = live
        self.scratch = scratch if scratch is not None else listing()
        self.after = after  # what the node holds after an apply (default: the scratch result)
        self.tables = tables

    def answer(self, argv, data):
        if argv[0] == "/usr/sbin/unshare":
            assert argv[1:3] == ["--net", "--"] and argv[-3:] == ["/usr/sbin/nft", "ip", "demo"]
            if isinstance(self.scratch[0], int):
                return self.scratch[0], "", self.scratch[1]
            sep = SCRATCH_SEPARATOR + "\n"
            return 0, self.tables + "\n" + sep + self.scratch[0] + "\n" + sep + self.scratch[1], ""
        verb = argv[1:3]
        if verb == ["-j", "list"] or argv[1] == "list":
            if self.live is None:
                return 1, "", "Error: No such file or directory\nlist table ip demo\n"
            return 0, self.live[0] if argv[1] == "-j" else self.live[1], ""
        if argv[1] == "-f":
            self.live = self.after or self.scratch
            return 0, "", ""
        if argv[1] == "delete":
            self.live = None
            return 0, "", ""
        raise AssertionError(f"unexpected command {argv}")

    def writes(self):
        return [argv for argv, _data in self.commands if argv[1] in ("-f", "delete")]


def nft_task(live=None, scratch=None, check_mode=False, after=None, tables=TABLES, **params):
    """The nftables_table module's real AnsibleModule for ``params`` (table ip demo with CONTENT unless
    given), its tools an NftTools; ``module.calls`` and ``module.writes()`` are what it ran."""
    node = NftTools(live, scratch, after, tables)
    params = {"family": "ip", "name": "demo", "content": CONTENT, **params}
    module = build(nftables_table, node, check_mode=check_mode, **{k: v for k, v in params.items() if v is not None})
    module.calls = node.commands
    module.writes = node.writes
    return module


def test_creates_a_missing_table_in_one_batch():
    module = nft_task()
    result = nftables_table.nftables_table(module)
    assert result["changed"] and result["table"] == {"family": "ip", "name": "demo", "present": True, "chains": 1}
    assert result["diff"]["before"] == "" and result["diff"]["after"] == listing()[1]
    applied = [data for argv, data in module.calls if argv[1] == "-f"]
    assert applied == [replace_batch("ip", "demo", CONTENT)]
    scratch_batch = [data for argv, data in module.calls if argv[0].endswith("unshare")]
    assert scratch_batch == applied  # the scratch namespace checked exactly what the node got


def test_same_table_with_other_handles_and_counters_is_unchanged():
    module = nft_task(live=listing(handle=40, packets=12345))
    result = nftables_table.nftables_table(module)
    assert not result["changed"] and module.writes() == []


def test_different_rules_change_and_check_mode_writes_nothing():
    module = nft_task(live=listing(rules=("drop",)), check_mode=True)
    result = nftables_table.nftables_table(module)
    assert result["changed"] and module.writes() == []
    assert "drop" in result["diff"]["before"] and "counter" in result["diff"]["after"]


def test_a_chain_comment_change_is_a_change():
    # nft's JSON leaves chain comments out; the text listing carries them.
    module = nft_task(live=listing(comment="old"), scratch=listing(comment="new"))
    assert nftables_table.nftables_table(module)["changed"]
    assert not nftables_table.nftables_table(nft_task(live=listing(comment="x"), scratch=listing(comment="x")))[
        "changed"]


def test_nft_rejecting_the_content_fails_before_any_write():
    module = nft_task(live=listing(), scratch=(90, "Error: syntax error, unexpected string\n"))
    with pytest.raises(KubeIpvsError, match=r"nft rejected the content.*syntax error"):
        nftables_table.nftables_table(module)
    assert module.writes() == []


def test_content_that_makes_another_table_is_refused():
    module = nft_task(tables=json.dumps({"nftables": [{"table": {"family": "ip", "name": "demo"}},
                                                      {"table": {"family": "inet", "name": "filter"}}]}))
    with pytest.raises(KubeIpvsError, match="also makes inet filter"):
        nftables_table.nftables_table(module)
    assert module.writes() == []


def test_a_table_that_differs_after_apply_fails():
    module = nft_task(after=listing(rules=("drop",)))
    with pytest.raises(KubeIpvsError, match="does not hold the content"):
        nftables_table.nftables_table(module)


def test_state_absent():
    module = nft_task(live=listing(), state="absent", content=None)
    result = nftables_table.nftables_table(module)
    assert result["changed"] and not result["table"]["present"] and result["diff"]["after"] == ""
    assert module.writes() == [["/usr/sbin/nft", "delete", "table", "ip", "demo"]]
    assert not [argv for argv, _data in module.calls if argv[0].endswith("unshare")]
    again = nft_task(live=None, state="absent", content=None)
    assert not nftables_table.nftables_table(again)["changed"] and again.writes() == []
    checked = nft_task(live=listing(), state="absent", check_mode=True)
    assert nftables_table.nftables_table(checked)["changed"] and checked.writes() == []


@pytest.mark.parametrize("params, message", [
    ({"name": "bad name"}, "not an nftables table name"),
    ({"name": "x;flush"}, "not an nftables table name"),
    ({"content": None}, "content is required"),
    ({"content": "}\nflush ruleset\ntable ip demo {"}, "closes the table"),
    ({"content": "chain a {\n"}, "not closed"),
    ({"content": 'chain a {\n\tcomment "open\n}\n'}, "not closed"),
    ({"content": 'include "/etc/nftables.conf"\n'}, "include"),
])
def test_bad_input_fails_before_any_command(params, message):
    module = nft_task(**params)
    with pytest.raises(KubeIpvsError, match=message):
        nftables_table.nftables_table(module)
    assert module.calls == []


def test_a_family_nftables_does_not_have_is_refused_before_any_command(capsys):
    result = run_main(nftables_table, capsys, family="ipx", name="demo", content=CONTENT)
    assert result["failed"] and "family" in result["msg"]  # the argument spec refuses it
    with pytest.raises(KubeIpvsError, match="family"):
        validate_table("ipx", "demo")  # and so does the module's own check


def test_content_checks_ignore_braces_in_strings_and_comments():
    check_content('chain a {\n\tcomment "}}} {"\n\t# } not code\n\tip saddr { 192.0.2.1, 192.0.2.2 } drop\n}\n')
    validate_table("inet", "kube-proxy")


def test_canonical_form_sorts_objects_and_ignores_runtime_state():
    def doc(order, elements, affinity):
        sets = {
            "s": {"set": {"family": "ip", "name": "s", "table": "t", "type": "ipv4_addr", "handle": 9,
                          "elem": elements}},
            "affinity": {"set": {"family": "ip", "name": "affinity", "table": "t", "type": "ipv4_addr",
                                 "flags": ["timeout"], "timeout": 60, "handle": 10, **affinity}},
            "rule": {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 11,
                              "expr": [{"set": {"op": "update", "elem": {"payload": {"protocol": "ip",
                                                                                     "field": "saddr"}},
                                                "set": "@affinity"}}]}},
        }
        return json.dumps({"nftables": [sets[name] for name in order]})

    one = canonical_table(doc(["s", "affinity", "rule"], ["192.0.2.1", "192.0.2.2"], {}))
    two = canonical_table(doc(["affinity", "s", "rule"], ["192.0.2.2", "192.0.2.1"],
                              {"elem": [{"elem": {"val": "198.51.100.1", "timeout": 60, "expires": 30}}]}))
    assert one == two
    three = canonical_table(doc(["s", "affinity", "rule"], ["192.0.2.1"], {}))
    assert three != one


def test_listing_comments():
    text = ('table ip kube-proxy {\n\tcomment "rules for kube-proxy"\n\tchain reject-chain {\n'
            '\t\tcomment "helper"\n\t\treject\n\t}\n\tchain services {\n\t\tip daddr 1.2.3.4 drop comment "r"\n'
            '\t}\n}\n')
    assert listing_comments(text) == {"table": "rules for kube-proxy", "chain reject-chain": "helper"}


@pytest.mark.parametrize("content, message", [
    # Python's splitlines() breaks at these, nft does not: a comment runs on to the next "\n" only.
    ("chain a {\n}\n# x\r}\nflush ruleset\ntable ip demo {\n", "control character"),
    ("chain a {\n}\n# x\x0b}\nflush ruleset\ntable ip demo {\n", "control character"),
    ("chain a {\n}\n# x\u2028}\nflush ruleset\ntable ip demo {\n", "control character"),
    ("chain a {\n}\n# x\x1c}\n", "control character"),
    ("chain a { }\x00\n", "control character"),
    # include anywhere, not only at the start of a line
    ('chain a { } ; include "/etc/nftables.conf"\n', "include"),
    ('chain a { } 1include "/etc/nftables.conf"\n', "include"),
    # a quoted string runs over newlines, so a brace after it is code
    ('chain a {\n\tcomment "x\n"\n}\n}\nflush ruleset\ntable ip demo {\n', "closes the table"),
    ('chain a { comment "} # {" ; }\n}', "closes the table"),
    ("#{\n}\n", "closes the table"),
    (5, "expected a string"),
])
def test_content_is_read_the_way_nft_reads_it(content, message):
    module = nft_task(content=content) if isinstance(content, str) else None
    with pytest.raises(KubeIpvsError, match=message):
        check_content(content)
    if module is not None:
        with pytest.raises(KubeIpvsError, match=message):
            nftables_table.nftables_table(module)
        assert module.calls == []


@pytest.mark.parametrize("content", [
    'chain a {\n\tcomment "include {"\n\t# include }\n}\n',
    "chain inbound {\n}\n",
    "set s {\n\ttype ipv4_addr\n\telements = { 192.0.2.1 } # }}}\n}\n",
    'chain a {\n\tcomment "a\nb"\n}\n',
    "",
])
def test_content_nft_takes_as_one_table_body_passes(content):
    check_content(content)


@pytest.mark.parametrize("name", ["demo\n", "demo\x00", "de mo", "x" * 257, "-x"])
def test_table_names_are_whole_nft_identifiers(name):
    module = nft_task(name=name)
    with pytest.raises(KubeIpvsError, match=r"not an nftables table name|control character"):
        nftables_table.nftables_table(module)
    assert module.calls == []


def test_content_that_changes_other_tables_in_the_scratch_namespace_is_refused():
    # The scratch script's canary tables changed: the content reached beyond its table even though
    # the content check let it through (the exit status the script gives then).
    module = nft_task(live=listing(), scratch=(CANARY_TOUCHED, ""))
    with pytest.raises(KubeIpvsError, match="changed other tables"):
        nftables_table.nftables_table(module)
    assert module.writes() == []
