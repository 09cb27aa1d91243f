# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables: list the tables (``nft -j list tables``) and delete one. Only whole tables: kube-proxy's
nftables mode keeps everything it makes in its own ``kube-proxy`` table per family."""

from __future__ import annotations

import json
import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError


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


class Nftables:
    """The node's nftables through the ``nft`` tool; ``run(argv)`` returns (rc, stdout, stderr)."""

    def __init__(self, run, nft_path):
        self.run = run
        self.nft = nft_path

    def list_tables(self):
        if not self.nft:
            return []  # no nft tool: nothing kube-proxy's nftables mode can have left either
        rc, out, err = self.run([self.nft, "-j", "list", "tables"])
        if rc != 0:
            raise KubeIpvsError(f"nft -j list tables failed: {err.strip()}", rc=rc)
        return parse_tables(out)

    def delete_table(self, family, name):
        rc, _out, err = self.run([self.nft, "delete", "table", family, name])
        if rc != 0 and "No such file or directory" not in err:
            raise KubeIpvsError(f"nft delete table {family} {name} failed: {err.strip()}", rc=rc)


# --- one whole table, declaratively (the nftables_table module) ---------------------------------

TABLE_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
# nft's identifier syntax (scanner.l: [a-zA-Z_.][a-zA-Z0-9/\-_.]*), kept to the 256-byte name limit.
TABLE_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9/_.-]{0,255}$")
SCRATCH_SEPARATOR = "@@kubeipvs-nftables-separator@@"
# Runs inside a network namespace of its own (unshare --net), which dies with the shell: loads the
# batch into an empty ruleset and prints the tables, the table as JSON and the table as text.
SCRATCH_SCRIPT = (
    'nft="$1"; family="$2"; name="$3"; '
    '"$nft" -f - || exit 90; '
    '"$nft" -j list tables || exit 91; echo "' + SCRATCH_SEPARATOR + '"; '
    '"$nft" -j list table "$family" "$name" || exit 92; echo "' + SCRATCH_SEPARATOR + '"; '
    '"$nft" list table "$family" "$name" || exit 93'
)


def validate_table(family, name):
    if family not in TABLE_FAMILIES:
        raise KubeIpvsError(f"family: {family!r} is not one of {', '.join(TABLE_FAMILIES)}")
    if not TABLE_NAME.match(name or ""):
        raise KubeIpvsError(f"name: {name!r} is not an nftables table name (a letter, '_' or '.' first, then "
                            "letters, digits, '/', '_', '.', '-')")


def check_content(content):
    """Reject content that could reach beyond its own table before nft sees it.

    The body goes between ``table F N {`` and ``}``: an unbalanced ``}`` would end the table early
    and let the rest of the text act on other tables (``flush ruleset`` ...), and ``include`` would
    pull in text nobody reviewed. Strings ("...") and comments (# to end of line) are skipped.
    """
    depth, in_string, in_comment = 0, False, False
    for line_number, line in enumerate(content.splitlines(), 1):
        in_comment = False
        if re.match(r"\s*include\b", line) and not in_string:
            raise KubeIpvsError(f"content line {line_number}: include is not allowed, give the statements themselves")
        for char in line:
            if in_comment:
                break
            if in_string:
                in_string = char != '"'
            elif char == '"':
                in_string = True
            elif char == "#":
                in_comment = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth < 0:
                    raise KubeIpvsError(f"content line {line_number}: '}}' closes the table itself; the content is "
                                        "the body of the table only")
    if in_string:
        raise KubeIpvsError("content: a string (\") is not closed")
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


def _not_found(err):
    return "No such file or directory" in (err or "")


class TableEditor(Nftables):
    """Nftables plus what a declarative table needs: read one table, load a batch into a scratch
    network namespace, apply a batch. ``run(argv, data=None)`` returns (rc, stdout, stderr)."""

    def __init__(self, run, nft_path, unshare_path=None):
        super().__init__(run, nft_path)
        self.unshare = unshare_path

    def read_table(self, family, name):
        """The live table, or None when it does not exist."""
        rc, out, err = self.run([self.nft, "-j", "list", "table", family, name])
        if rc != 0:
            if _not_found(err):
                return None
            raise KubeIpvsError(f"nft -j list table {family} {name} failed: {err.strip()}", rc=rc)
        rc, text, err = self.run([self.nft, "list", "table", family, name])
        if rc != 0:
            raise KubeIpvsError(f"nft list table {family} {name} failed: {err.strip()}", rc=rc)
        return TableListing(out, text)

    def scratch_load(self, batch, family, name):
        """Load ``batch`` into an empty, throw-away network namespace and read the table back as the
        kernel stores it - the canonical form of the desired content, and its validation: nft's
        error comes back before anything on the node changed."""
        if not self.unshare:
            raise KubeIpvsError("the unshare tool (util-linux) is needed to check the content in a scratch "
                                "network namespace; install util-linux")
        rc, out, err = self.run([self.unshare, "--net", "--", "sh", "-c", SCRATCH_SCRIPT, "sh", self.nft, family, name],
                                data=batch)
        if rc == 90:
            raise KubeIpvsError(f"nft rejected the content of table {family} {name}, nothing was changed: "
                                f"{err.strip()}", rc=rc, batch=batch)
        if rc != 0:
            raise KubeIpvsError(f"could not check the content in a scratch network namespace (unshare --net, rc "
                                f"{rc}): {err.strip()}", rc=rc)
        parts = out.split(SCRATCH_SEPARATOR + "\n")
        if len(parts) != 3:
            raise KubeIpvsError("unexpected output while checking the content in a scratch network namespace")
        tables = parse_tables(parts[0])
        others = sorted(f"{f} {n}" for f, n in tables if (f, n) != (family, name))
        if others:
            raise KubeIpvsError(f"the content must only describe table {family} {name}, but it also makes "
                                f"{', '.join(others)}; nothing was changed")
        return TableListing(parts[1], parts[2])

    def apply(self, batch):
        rc, _out, err = self.run([self.nft, "-f", "-"], data=batch)
        if rc != 0:
            raise KubeIpvsError(f"nft -f failed, the kernel kept the table as it was: {err.strip()}", rc=rc)
