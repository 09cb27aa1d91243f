# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The shared whitelist: control characters, name grammars, plain addresses, integers."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure import _text as text
from hypothesis import given, settings
from hypothesis import strategies as st

# Every character a line-oriented tool or Python's splitlines() could take for a break, and the
# invisible ones.
BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\t", "\x7f",
          "\u200b", "\u202e", "\ufeff", "\ud800"]


@pytest.mark.parametrize("character", BREAKS)
def test_no_control_character_passes(character):
    with pytest.raises(KubeIpvsError, match="control character"):
        text.check_text(f"KUBE{character}X", "name")
    assert not text.IPSET_NAME.matches(f"KUBE{character}X")


def test_allowed_characters_and_the_offending_one_is_named():
    assert text.check_text("a\n\tb", "content", allow="\n\t") == "a\n\tb"
    with pytest.raises(KubeIpvsError, match=r"'\\r' at position 1"):
        text.check_text("a\rb", "content", allow="\n\t")
    with pytest.raises(KubeIpvsError, match="expected a string, got int"):
        text.check_text(5, "name")


@pytest.mark.parametrize("grammar, good, bad", [
    (text.LINK_NAME, ["kube-ipvs0", "eth0.100", "a" * 15], ["", "a" * 16, "a/b", "a:b", "a b", ".", "..", "eth0\n"]),
    (text.IPSET_NAME, ["KUBE-LOOP-BACK", "x", "a" * 31], ["", "a" * 32, "-exist", "a b", 'a"b', "a\n"]),
    (text.CHAIN_NAME, ["KUBE-SERVICES", "c"], ["", "a" * 29, "-j", "!x", "a b", "a\x00"]),
    (text.NFT_IDENTIFIER, ["kube-proxy", "_x", ".y"], ["1x", "a;b", "a b", "kube-proxy\n"]),
    (text.SYSCTL_KEY_PART, ["ip_forward", "eth0.100"], ["", ".", "..", "a b", "ip_forward\n"]),
    (text.MODULE_PARAMETER, ["conn_tab_bits"], ["a-b", "a\n", ""]),
    (text.DROPIN_NAME, ["90-kubeipvs-node.conf"], [".conf", "a\n.conf", "a.conf\n", "a b.conf", "-x.conf", "a.cnf"]),
    (text.DNS1123_SUBDOMAIN, ["kube-proxy", "node1.example"], ["Node1", "-a", "a_b", "a/b", "a" * 254]),
    (text.DNS1123_LABEL, ["kube-system"], ["kube.system", "A"]),
    (text.PATH_SEGMENT, ["system:node-proxier"], ["a/b", "..", "a?b", "a%2f"]),
])
def test_grammars(grammar, good, bad):
    for name in good:
        assert grammar.check(name, "name") == name
    for name in bad:
        with pytest.raises(KubeIpvsError):
            grammar.check(name, "name")


def test_addresses_are_plain():
    assert str(text.ip_address(" 10.0.0.1 ", "a")) == "10.0.0.1"
    assert str(text.ip_network("10.0.0.1/8", "n")) == "10.0.0.0/8"
    for bad in ("fe80::1%eth0", "fe80::1%a\nflush ruleset", "10.0.0.1\x00", "10.0.0.300"):
        with pytest.raises(KubeIpvsError):
            text.ip_address(bad, "a")
    with pytest.raises(KubeIpvsError, match="scope"):
        text.ip_network("fe80::%x/64", "n")


@pytest.mark.parametrize("value, expected", [(5, 5), ("7", 7), ("0x10", 16), (" 3 ", 3)])
def test_integers(value, expected):
    assert text.integer(value, "n", 0, 100) == expected


@pytest.mark.parametrize("value", [True, 1.0, float("inf"), float("nan"), "1e400", "-1", "²", "1_000", 101, -1,
                                   None, [1], "Infinity"])
def test_integers_refused(value):
    with pytest.raises(KubeIpvsError):
        text.integer(value, "n", 0, 100)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_check_text_passes_exactly_the_text_without_control_characters(value):
    clean = all(text.CONTROL.fullmatch(character) is None for character in value)
    try:
        assert text.check_text(value, "v") == value
    except KubeIpvsError:
        assert not clean
    else:
        assert clean
        # what passes has no line break any reader knows of
        assert value.splitlines() == [value] or value == ""


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers())))
def test_every_grammar_and_parser_answers_any_value_cleanly(value):
    for grammar in (text.LINK_NAME, text.IPSET_NAME, text.CHAIN_NAME, text.NFT_IDENTIFIER, text.DROPIN_NAME,
                    text.DNS1123_SUBDOMAIN, text.MODULE_NAME, text.PATH_SEGMENT):
        if grammar.matches(value):
            assert text.CONTROL.search(value) is None and value.strip() == value
        else:
            with pytest.raises(KubeIpvsError):
                grammar.check(value, "v")
    for parse in (text.ip_address, text.ip_network):
        try:
            parsed = parse(value, "v")
        except KubeIpvsError:
            continue
        assert "%" not in str(parsed) and text.CONTROL.search(str(parsed)) is None
    try:
        number = text.integer(value, "v", 0, 2 ** 32)
    except KubeIpvsError:
        return
    assert isinstance(number, int) and 0 <= number <= 2 ** 32
