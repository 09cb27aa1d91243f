# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables tables as data: table names, content that stays inside its table, the replacement
batch, and a comparable form of a table's listing. Running nft is node/_nftables.py's job.
"""

from __future__ import annotations

import json
import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import NFT_IDENTIFIER, Name, check_text


def parse_tables(text):
    """[(family, name)] from ``nft -j list tables`` output."""
    try:
        document = json.loads(text or "{}")
    except ValueError as error:
        raise KubeIpvsError(f"nft -j list tables printed something that is not JSON: {error}") from None
    tables = []
    for item in document.get("nftables", []):
        table = item.get("table") if isinstance(item, dict) else None
        if table:
            tables.append((table["family"], table["name"]))
    return tables


TABLE_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


TABLE_NAME = Name(NFT_IDENTIFIER.pattern.pattern, "an nftables table name (a letter, '_' or '.' first, then letters, "
                  "digits, '/', '_', '.', '-')", max_bytes=NFT_IDENTIFIER.max_bytes)


def validate_table(family, name):
    if family not in TABLE_FAMILIES:
        raise KubeIpvsError(f"family: {family!r} is not one of {', '.join(TABLE_FAMILIES)}")
    TABLE_NAME.check(name, "name")


# A run of the characters nft's scanner builds words from (names, numbers, addresses). Its
# ``include`` keyword can hide inside such a run ("1include" scans as a number, then the keyword),
# so every run that holds those letters is refused, which also refuses some harmless names.
_WORD = re.compile(r"[A-Za-z0-9_./*\\-]+")


def check_content(content):
    """Refuse content that could reach beyond its own table, reading it the way nft's scanner does.

    The body goes between ``table F N {`` and ``}``: a ``}`` that closes the table would let the rest
    of the text run as top-level commands (``flush ruleset`` ...), and ``include`` pulls in text
    nobody reviewed. nft reads a quoted string from ``"`` to the next ``"`` (newlines included, no
    escapes), a comment from ``#`` to the next newline, and only a newline ends a line - so any
    other line break or control character is refused outright (Python's own line splitting knows
    more separators than nft does), and braces are counted outside strings and comments only.
    """
    check_text(content, "content", allow="\n\t")
    depth, line_number, index, length = 0, 1, 0, len(content)
    while index < length:
        char = content[index]
        if char == "\n":
            line_number += 1
        elif char == '"':
            end = content.find('"', index + 1)
            if end < 0:
                raise KubeIpvsError(f"content line {line_number}: a string (\") is not closed")
            line_number += content.count("\n", index, end)
            index = end
        elif char == "#":
            end = content.find("\n", index)
            index = length if end < 0 else end
            continue
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise KubeIpvsError(f"content line {line_number}: '}}' closes the table itself; the content is "
                                    "the body of the table only")
        else:
            word = _WORD.match(content, index)
            if word:
                if "include" in word.group():
                    raise KubeIpvsError(f"content line {line_number}: include is not allowed, give the statements "
                                        "themselves")
                index = word.end()
                continue
        index += 1
    if depth:
        raise KubeIpvsError(f"content: {depth} '{{' not closed")


def replace_batch(family, name, content):
    """One nft transaction that leaves the table holding exactly ``content``: ``add`` makes the
    ``delete`` safe when the table is absent, and ``nft -f`` sends all three as one netlink batch
    the kernel commits or aborts as a whole."""
    body = content if content.endswith("\n") else content + "\n"
    return f"add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n"


def _strip_state(value):
    """Counters and quotas count traffic, not configuration: zero them so they never make a diff."""
    if isinstance(value, list):
        return [_strip_state(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {}
    for key, item in value.items():
        if key in ("packets", "bytes", "used", "expires"):
            continue
        result[key] = _strip_state(item)
    return result


def _dynamic_sets(rules):
    """Names of sets the datapath writes (``update @set { ... }``, ``add @set ...``): their
    elements are runtime state (session affinity), not configuration."""
    names = set()

    def walk(value):
        if isinstance(value, dict):
            inner = value.get("set")
            if isinstance(inner, dict) and "op" in inner and str(inner.get("set", "")).startswith("@"):
                names.add(inner["set"][1:])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(rules)
    return names


def listing_comments(text):
    """Table and chain comments from ``nft list table`` text (nft's JSON output leaves them out)."""
    comments = {}
    lines = (text or "").splitlines()
    for index, line in enumerate(lines):
        header = re.match(r"^\s*(table|chain)\s+(?:\S+\s+\S+|(\S+))\s*\{\s*$", line)
        if not header:
            continue
        key = "table" if header.group(1) == "table" else "chain " + header.group(2)
        for following in lines[index + 1:index + 3]:
            found = re.match(r'^\s*comment\s+"(.*)"\s*$', following)
            if found:
                comments[key] = found.group(1)
                break
    return comments


def canonical_table(json_text, text=""):
    """A comparable form of one table from ``nft -j list table`` (+ its text listing for comments):
    no handles, no counters, objects sorted by kind and name, rules grouped per chain in order."""
    try:
        document = json.loads(json_text or "{}")
    except ValueError as error:
        raise KubeIpvsError(f"nft -j list table printed something that is not JSON: {error}") from None
    objects, rules = [], {}
    for item in document.get("nftables", []):
        if not isinstance(item, dict) or len(item) != 1:
            continue
        kind, body = next(iter(item.items()))
        if kind == "metainfo" or not isinstance(body, dict):
            continue
        body = {key: value for key, value in body.items() if key != "handle"}
        if kind == "rule":
            rules.setdefault(body.get("chain", ""), []).append(_strip_state(body))
        else:
            objects.append((kind, body.get("name", ""), body))
    dynamic = _dynamic_sets(list(rules.values()))
    canonical = []
    for kind, name, body in sorted(objects, key=lambda entry: (entry[0], entry[1])):
        if kind in ("set", "map") and name in dynamic:
            body = {key: value for key, value in body.items() if key != "elem"}
        elif "elem" in body:
            elements = _strip_state(body["elem"])
            body = dict(body, elem=sorted(elements, key=lambda elem: json.dumps(elem, sort_keys=True)))
        canonical.append({kind: _strip_state(body)})
    return {"objects": canonical, "rules": {chain: rules[chain] for chain in sorted(rules)},
            "comments": listing_comments(text)}


def count_chains(json_text):
    document = json.loads(json_text or "{}")
    return sum(1 for item in document.get("nftables", []) if isinstance(item, dict) and "chain" in item)


class TableListing:
    """One table as the kernel holds it: ``json`` (nft -j list table) and ``text`` (nft list table)."""

    def __init__(self, json_text, text):
        self.json = json_text
        self.text = text

    def canonical(self):
        return canonical_table(self.json, self.text)

    def chains(self):
        return count_chains(self.json)
