# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ipset: parse and normalise entries, read ``ipset save`` output, plan changes, render restore batches.

Pure logic only: node/_ipset.py feeds it the text the ``ipset`` tool prints and runs the batch it
returns through ``ipset restore -exist``.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import re
import shlex

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import (
    HOST_PREFIX,
    INET,
    IPV4,
    IPV6,
    OF_INET,
    family_of,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._results import fail_on_problems, validate_each
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    DECIMAL,
    IPSET_NAME,
    LINK_NAME,
    check_text,
    integer,
    ip_address,
    ip_network,
)

MAX_SET_NAME = 31
# The kernel's limits of a set's create options (ipset(8): timeouts up to 2147483 seconds,
# maxelem and hashsize are 32-bit; a bitmap:ip set covers at most 65536 addresses).
MAX_TIMEOUT = 2147483
MAX_ELEMENTS = 0xFFFFFFFF
MAX_HASHSIZE = 1 << 31
MAX_BITMAP_IP = 65536

# Above this many member changes (adds + removals) the set is rebuilt in a temporary set and
# swapped in, so packet-path readers never see a half-applied change. Below it the changes are
# added/removed in place: every single entry change is atomic in the kernel and a small batch
# costs far less than re-adding the whole set.
SWAP_THRESHOLD = 1000

PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite")

# Entry components per set type, in the order ``ipset`` prints them.
SET_TYPES = {
    "hash:ip": ("ip",),
    "hash:net": ("net",),
    "hash:mac": ("mac",),
    "hash:ip,port": ("ip", "port"),
    "hash:ip,mark": ("ip", "mark"),
    "hash:net,port": ("net", "port"),
    "hash:net,iface": ("net", "iface"),
    "hash:net,net": ("net", "net"),
    "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"),
    "hash:net,port,net": ("net", "port", "net"),
    "bitmap:port": ("bitmap-port",),
    "bitmap:ip": ("ip",),
}

# What ``ipset swap`` compares (the kernel's type "features"): sets whose component kinds differ
# cannot be swapped and must be destroyed and re-created instead.
_FEATURE_OF = {
    "ip": "ip",
    "net": "ip",
    "port": "port",
    "bitmap-port": "port",
    "mac": "mac",
    "mark": "mark",
    "iface": "iface",
}


def set_features(set_type, family):
    """The tuple the kernel compares when two sets are swapped."""
    kinds = SET_TYPES[set_type]
    features = tuple(_FEATURE_OF[kind] + ("2" if index == 2 else "") for index, kind in enumerate(kinds))
    if set_type.startswith("bitmap:port") or set_type == "hash:mac":
        family = None
    return features, family


def temporary_set_name(name):
    """A name for the scratch set a swap builds: unique per set, recognisable, at most 31 characters."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:7]
    return f"{name[:20]}-tmp{digest}"


def backup_set_name(name):
    """The name a set is renamed to while its re-created replacement takes its name (at most 31)."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:7]
    return f"{name[:20]}-old{digest}"


# ---------------------------------------------------------------------------------------------
# Entries


# Dotted quads ipaddress would print unchanged (no leading zeros, octets 0-255): the common case,
# taken without building an ipaddress object (10x faster at 100k members).
_CANONICAL_IPV4 = re.compile(
    r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
)


def printed(address):
    """An address as ``ipset save`` prints it (glibc's inet_ntop): an IPv4-mapped IPv6 address ends in a
    dotted quad (``::ffff:10.0.0.1``), and so does an IPv4-compatible one (``::1.2.3.4``), where
    Python prints hex groups - a member that never compared equal would be re-added on every run."""
    if address.version == 6:
        value = int(address)
        if value >> 32 == 0xFFFF or (value >> 32 == 0 and value >> 16):
            return ("::ffff:" if value >> 32 else "::") + str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return str(address)


def _address(text, family, what):
    if family == IPV4 and _CANONICAL_IPV4.fullmatch(text):
        return text
    try:
        address = ip_address(text, "address")
    except KubeIpvsError:
        raise KubeIpvsError(f"'{text}' is not an IP address ({what})") from None
    if family_of(address) != family:
        raise KubeIpvsError(
            "'{}' is not an {} address (family {})".format(text, "IPv6" if family == IPV6 else "IPv4", INET[family])
        )
    return printed(address)


def _host_address(text, family, what):
    """hash:ip members: a single address; the /32 or /128 host form is accepted and printed bare."""
    if "/" in text:
        address, _slash, prefix = text.partition("/")
        host_prefix = str(HOST_PREFIX[family])
        if prefix != host_prefix:
            raise KubeIpvsError(
                f"'{text}' is a network, but {what} holds single addresses (use a hash:net type or /{host_prefix})"
            )
        text = address
    return _address(text, family, what)


def _network(text, family, what):
    """hash:net members: ``ipset`` stores the network address and prints host networks without a prefix."""
    try:
        network = ip_network(text, "network")
    except KubeIpvsError:
        raise KubeIpvsError(f"'{text}' is not an IP address or CIDR ({what})") from None
    if family_of(network) != family:
        raise KubeIpvsError(f"'{text}' does not belong to family {INET[family]} ({what})")
    if network.prefixlen == 0:
        raise KubeIpvsError(f"'{text}': ipset refuses a /0 network ({what})")
    if network.prefixlen == network.max_prefixlen:
        return printed(network.network_address)
    return f"{printed(network.network_address)}/{network.prefixlen}"


def _port_number(text, what):
    if not DECIMAL.fullmatch(text) or int(text) > 65535:
        raise KubeIpvsError(f"'{text}' is not a port number 0-65535 ({what})")
    return int(text)


def _proto_port(text, what):
    """``80`` means ``tcp:80`` (the ipset tool's default protocol)."""
    protocol, separator, port = text.rpartition(":")
    if not separator:
        protocol = "tcp"
    protocol = protocol.lower()
    if protocol not in PORT_PROTOCOLS:
        raise KubeIpvsError(
            "protocol '{}' in '{}' is not supported; use one of {} ({})".format(
                protocol, text, ", ".join(PORT_PROTOCOLS), what
            )
        )
    return f"{protocol}:{_port_number(port, what)}"


def _mac(text, what):
    if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", text):
        raise KubeIpvsError(f"'{text}' is not a MAC address ({what})")
    return text.upper()


def _mark(text, what):
    try:
        value = integer(text, "mark", 0, 0xFFFFFFFF)
    except KubeIpvsError:
        raise KubeIpvsError(f"'{text}' is not a mark 0-0xffffffff ({what})") from None
    return f"0x{value:08x}"


PHYSDEV = "physdev:"


def _iface(text, what):
    """hash:net,iface's interface part: an interface name, or ``physdev:`` and one (bridge ports).
    ipset itself takes any text here, white space included - which would be further words of a
    restore line."""
    name = text[len(PHYSDEV):] if text.startswith(PHYSDEV) else text
    if not LINK_NAME.matches(name):
        raise KubeIpvsError(f"'{text}' is not an interface name, with or without '{PHYSDEV}' ({what}; 1-15 "
                            "bytes, no '/', ':' or spaces)")
    return text


def normalise_entry(entry, set_type, family=IPV4, port_range=None):
    """One member in the form ``ipset save`` prints it, or KubeIpvsError naming what is wrong."""
    kinds = SET_TYPES[set_type]
    if isinstance(entry, bool) or not isinstance(entry, (str, int)):
        raise KubeIpvsError(f"entry {entry!r} of a {set_type} set: expected a string"[:300])
    text = check_text(str(entry), f"entry of a {set_type} set").strip(" ")
    what = f"entry '{text}' of a {set_type} set"
    parts = text.split(",")
    if len(parts) != len(kinds) or not all(parts):
        raise KubeIpvsError(f"{what}: expected {len(kinds)} comma-separated part(s): {','.join(kinds)}")
    normalised = []
    for kind, part in zip(kinds, parts, strict=False):
        part = part.strip(" ")
        if kind == "ip":
            normalised.append(_host_address(part, family, what))
        elif kind == "net":
            normalised.append(_network(part, family, what))
        elif kind == "port":
            normalised.append(_proto_port(part, what))
        elif kind == "bitmap-port":
            # bitmap:port accepts "tcp:80" too but stores (and prints) the bare number.
            number = _port_number(part.rpartition(":")[2], what)
            if port_range and not port_range[0] <= number <= port_range[1]:
                raise KubeIpvsError(f"{what}: port {number} is outside the set's range {port_range[0]}-{port_range[1]}")
            normalised.append(str(number))
        elif kind == "mac":
            normalised.append(_mac(part, what))
        elif kind == "mark":
            normalised.append(_mark(part, what))
        else:  # iface
            normalised.append(_iface(part, what))
    if set_type == "bitmap:ip" and port_range is not None:
        low, high = port_range
        if not low <= ip_address(normalised[0], what) <= high:
            raise KubeIpvsError(f"{what}: address outside the set's range")
    return ",".join(normalised)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
_CANONICAL_PART = {
    "ip": rf"(?:{_OCTET}\.){{3}}{_OCTET}",
    "port": r"(?:tcp|udp|sctp|udplite):" + _PORT,
}


def _canonical_pattern(set_type, family):
    """A regex matching entries already in the printed form (IPv4 addresses and ports only), or None."""
    kinds = SET_TYPES[set_type]
    if family != IPV4 or set_type.startswith("bitmap:") or not all(kind in _CANONICAL_PART for kind in kinds):
        return None  # bitmap sets also check the range, which a regex cannot
    return re.compile(",".join(_CANONICAL_PART[kind] for kind in kinds))


def normalise_entries(entries, set_type, family=IPV4, port_range=None):
    """All members as a set; the first bad one raises before anything is changed.

    Entries already in the printed form (the usual case for generated lists) are recognised by one
    regex match; only the others go through the full parser.
    """
    canonical = _canonical_pattern(set_type, family)
    if canonical is None:
        return {normalise_entry(entry, set_type, family, port_range) for entry in entries}
    match = canonical.fullmatch
    return {entry if type(entry) is str and match(entry)  # pylint: disable=unidiomatic-typecheck
            else normalise_entry(entry, set_type, family, port_range) for entry in entries}


def read_members_file(text):
    """Members file: one entry per line; blank lines and ``#`` comments are ignored."""
    if "#" not in text:
        return text.split()  # entries hold no blanks: one C-level split for 100k lines
    members = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            members.append(line)
    return members


# ---------------------------------------------------------------------------------------------
# Set headers


def parse_range(text, set_type):
    """``0-65535`` for bitmap:port; ``a.b.c.d-e.f.g.h`` or a CIDR for bitmap:ip."""
    if text is None:
        return None
    text = check_text(str(text), "range").strip(" ")
    if set_type == "bitmap:port":
        low, separator, high = text.partition("-")
        if (not separator or not DECIMAL.fullmatch(low) or not DECIMAL.fullmatch(high) or int(low) > int(high)
                or int(high) > 65535):
            raise KubeIpvsError(f"range '{text}' is not FROM-TO with ports 0-65535")
        return (int(low), int(high))
    if set_type == "bitmap:ip":
        try:
            if "/" in text:
                network = ip_network(text, "range")
                low, high = network.network_address, network.broadcast_address
            else:
                low_text, _dash, high_text = text.partition("-")
                low, high = ip_address(low_text, "range"), ip_address(high_text, "range")
        except KubeIpvsError:
            raise KubeIpvsError(f"range '{text}' is not FROM-TO addresses or a CIDR") from None
        if low.version != 4 or high.version != 4:
            raise KubeIpvsError(f"range '{text}': bitmap:ip sets hold IPv4 addresses only")
        if low > high:
            raise KubeIpvsError(f"range '{text}': FROM is above TO (the kernel would swap them, and the set would "
                                "never match this task again); give FROM-TO in ascending order")
        if int(high) - int(low) + 1 > MAX_BITMAP_IP:
            raise KubeIpvsError(f"range '{text}' covers more than {MAX_BITMAP_IP} addresses, the most a bitmap:ip "
                                "set holds")
        return (low, high)
    raise KubeIpvsError(f"range only applies to bitmap:port and bitmap:ip sets, not {set_type}")


def format_range(port_range, set_type):
    if port_range is None:
        return None
    return f"{port_range[0]}-{port_range[1]}"


def _next_power_of_two(value):
    power = 1
    while power < value:
        power *= 2
    return power


def desired_header(set_type, family, hashsize, maxelem, port_range, comment, timeout):
    """The create options, as ``ipset save`` prints them, that this module compares."""
    header = {"type": set_type}
    if set_type.startswith("hash:") and set_type != "hash:mac":
        header["family"] = INET[family]
    if set_type.startswith("hash:"):
        # The kernel rounds hashsize up to a power of two (and to at least 64, which the comparison
        # absorbs: hashsize is a floor).
        hashsize = 1024 if hashsize is None else integer(hashsize, "hashsize", 1, MAX_HASHSIZE)
        header["hashsize"] = _next_power_of_two(hashsize)
        header["maxelem"] = 65536 if maxelem is None else integer(maxelem, "maxelem", 1, MAX_ELEMENTS)
    if set_type.startswith("bitmap:"):
        if port_range is None:
            raise KubeIpvsError(f"a {set_type} set needs range (for example 0-65535)")
        header["range"] = format_range(port_range, set_type)
    if timeout is not None:
        header["timeout"] = integer(timeout, "timeout", 0, MAX_TIMEOUT)
    if comment:
        header["comment"] = True
    return header


def header_differs(desired, current):
    """Names of the options that differ. hashsize is a floor: the kernel grows it as the set fills."""
    differing = []
    for key in sorted(set(desired) | set(current)):
        want, have = desired.get(key), current.get(key)
        if key == "hashsize" and want is not None and have is not None and have >= want:
            continue
        if want != have:
            differing.append(key)
    return differing


def render_create(name, header):
    words = ["create", name, header["type"]]
    for key in ("family", "hashsize", "maxelem", "range", "timeout"):
        if key in header:
            words += [key, str(header[key])]
    if header.get("comment"):
        words.append("comment")
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Reading ``ipset save``

_FLAG_OPTIONS = ("comment", "counters", "skbinfo", "forceadd")
_VALUE_OPTIONS = (
    "family",
    "hashsize",
    "maxelem",
    "range",
    "timeout",
    "bucketsize",
    "initval",
    "netmask",
    "bitmask",
    "markmask",
    "size",
)
_COMPARED = ("family", "hashsize", "maxelem", "range", "timeout", "comment")


def _parse_create(words):
    """The compared create options of a ``create NAME TYPE ...`` line (already split into words)."""
    header = {"type": words[2]}
    index = 3
    while index < len(words):
        word = words[index]
        if word in _FLAG_OPTIONS:
            if word in _COMPARED:
                header[word] = True
            index += 1
        elif word in _VALUE_OPTIONS and index + 1 < len(words):
            if word in _COMPARED:
                value = words[index + 1]
                header[word] = int(value) if word in ("hashsize", "maxelem", "timeout") else value
            index += 2
        else:
            index += 1
    return header


def parse_save(text, name):
    """(header dict or None, set of members) from ``ipset save NAME`` output.

    Per-entry extensions (``timeout 299``, ``comment "x"``, counters) are dropped: they are not
    membership.
    """
    header = None
    # One regex pass in C over the whole text (100k lines): the entry is the word after "add NAME".
    members = set(re.findall(rf"^add {re.escape(name)} (\S+)", text, re.MULTILINE))
    for line in re.findall(r"^create .*$", text, re.MULTILINE):
        words = shlex.split(line)
        if words[1] == name:
            header = _parse_create(words)
    return header, members


def parse_save_all(text, names):
    """{name: (header or None, members)} for each of ``names`` from one ``ipset save`` of every set.

    One pass over the text: other sets' entries (a node may hold large foreign sets) are skipped
    by a dictionary lookup, never parsed.
    """
    wanted = {name: (None, set()) for name in names}
    for line in re.findall(r"^create .*$", text, re.MULTILINE):
        words = shlex.split(line)
        if words[1] in wanted:
            wanted[words[1]] = (_parse_create(words), wanted[words[1]][1])
    for name, entry in re.findall(r"^add (\S+) (\S+)", text, re.MULTILINE):
        if name in wanted:
            wanted[name][1].add(entry)
    return wanted


def parse_kernel_types(help_text):
    """Set types the node's ipset tool knows (``ipset help`` lists them with their revisions)."""
    types = set()
    in_types = False
    for line in help_text.splitlines():
        if line.startswith("Supported set types"):
            in_types = True
            continue
        if in_types:
            words = line.split()
            if words and ":" in words[0]:
                types.add(words[0])
    return types


# ---------------------------------------------------------------------------------------------
# Planning


class SetPlan:
    """What to do with one set: ``method`` is none, create, incremental, swap, recreate or destroy.

    Members are kept as sets; sorted lists (for batches and diffs) are built only when asked for,
    so a no-op at 100k members never sorts.
    """

    def __init__(self, method, to_add=(), to_remove=(), final_members=(), reasons=()):
        self.method = method
        self.add_set = to_add if isinstance(to_add, set) else set(to_add)
        self.remove_set = to_remove if isinstance(to_remove, set) else set(to_remove)
        self.final_set = final_members if isinstance(final_members, set) else set(final_members)
        self.reasons = list(reasons)

    @property
    def to_add(self):
        return sorted(self.add_set)

    @property
    def to_remove(self):
        return sorted(self.remove_set)

    @property
    def final_members(self):
        return sorted(self.final_set)

    @property
    def changed(self):
        return self.method != "none"


def plan_set(
    desired_header_, desired_members, current_header, current_members, exclusive, swap_threshold=SWAP_THRESHOLD
):
    """Decide how to bring the set from (current_header, current_members) to the desired state."""
    desired_members = desired_members if isinstance(desired_members, set) else set(desired_members)
    current_members = current_members if isinstance(current_members, set) else set(current_members or ())
    if current_header is None:
        return SetPlan("create", to_add=desired_members, final_members=desired_members, reasons=["set is missing"])
    to_add = desired_members - current_members
    to_remove = (current_members - desired_members) if exclusive else set()
    final = desired_members if exclusive else (current_members | to_add)
    differing = header_differs(desired_header_, current_header)
    if differing:
        current_features = (
            set_features(current_header["type"], current_header.get("family"))
            if current_header["type"] in SET_TYPES
            else None
        )
        swappable = current_features == set_features(desired_header_["type"], desired_header_.get("family"))
        method = "swap" if swappable else "recreate"
        return SetPlan(method, to_add, to_remove, final, reasons=["options differ: {}".format(", ".join(differing))])
    if not to_add and not to_remove:
        return SetPlan("none", final_members=final)
    if len(to_add) + len(to_remove) > swap_threshold:
        return SetPlan(
            "swap",
            to_add,
            to_remove,
            final,
            reasons=[f"{len(to_add) + len(to_remove)} member changes exceed the swap threshold {swap_threshold}"],
        )
    return SetPlan("incremental", to_add, to_remove, final)


def render_steps(name, header, plan):
    """(lines, final lines) of the ``ipset restore -exist`` input for a plan.

    ``lines`` can each be undone (pure/_ipset.undo_lines): the create line comes first, so a
    refused type fails before any member changes, and a set that changes type or options is
    built whole under a scratch name before it takes the set's place - by ``swap`` when the
    kernel can swap the two, else by renaming the old set aside and the new one in. Nothing is
    destroyed until the replacement exists. ``final`` are the destroys: the set itself when
    state=absent, or the scratch and old sets once the swap or rename is done. Members go in set
    order: the kernel does not care, and sorting 100k entries would cost more than the rest of
    the rendering.
    """
    lines, final = [], []
    if plan.method == "create":
        lines.append(render_create(name, header))
        lines += [f"add {name} {entry}" for entry in plan.final_set]
    elif plan.method in ("swap", "recreate"):
        scratch = temporary_set_name(name)
        # A run that died half-way may have left the scratch set behind, maybe with other options
        # (-exist makes this a no-op when it is not there).
        lines.append(f"destroy {scratch}")
        lines.append(render_create(scratch, header))
        lines += [f"add {scratch} {entry}" for entry in plan.final_set]
        if plan.method == "swap":
            lines.append(f"swap {scratch} {name}")
            final.append(f"destroy {scratch}")
        else:
            backup = backup_set_name(name)
            lines += [f"destroy {backup}", f"rename {name} {backup}", f"rename {scratch} {name}"]
            final.append(f"destroy {backup}")
    elif plan.method == "incremental":
        lines += [f"del {name} {entry}" for entry in plan.remove_set]
        lines += [f"add {name} {entry}" for entry in plan.add_set]
    elif plan.method == "destroy":
        final.append(f"destroy {name}")
    return lines, final


def render_batch(name, header, plan):
    """The whole ``ipset restore -exist`` input for one set's plan (render_steps in order)."""
    lines, final = render_steps(name, header, plan)
    return "\n".join(lines + final) + "\n" if lines or final else ""


def undo_lines(applied):
    """(restore lines that undo ``applied``, names of sets destroyed for good) - ``applied`` being the
    lines ``ipset restore`` took before it stopped, in order.

    A set created in the batch is destroyed again (its members with it), members added or deleted in
    place are deleted or added back, a swap is swapped back and a rename renamed back. A destroyed
    scratch or old set (``-tmp``/``-old`` names) held nothing the node needs; a destroyed set of the
    task's own (state=absent) cannot come back and is named.
    """
    created = {line.split(" ", 2)[1] for line in applied if line.startswith("create ")}
    undo, lost = [], []
    for line in reversed(applied):
        words = line.split(" ")
        verb, target = words[0], words[1] if len(words) > 1 else ""
        if verb == "create":
            undo.append(f"destroy {target}")
        elif verb == "add" and target not in created:
            undo.append(f"del {target} {words[2]}")
        elif verb == "del":
            undo.append(f"add {target} {words[2]}")
        elif verb == "swap":
            undo.append(line)
        elif verb == "rename":
            undo.append(f"rename {words[2]} {target}")
        elif verb == "destroy" and not _SCRATCH_NAME.search(target):
            lost.append(target)
    return undo, lost


_SCRATCH_NAME = re.compile(r"-(?:tmp|old)[0-9a-f]{7}$")


def check_capacity(desired, plans):
    """Fail, naming every set, when a set would hold more members than its maxelem allows - the
    kernel would stop the batch half-way ("Hash is full")."""
    problems = []
    for wanted in desired:
        plan = plans[wanted.name]
        limit = (wanted.header or {}).get("maxelem")
        if plan.changed and wanted.state == "present" and limit is not None and len(plan.final_set) > limit:
            problems.append(f"set {wanted.name} would hold {len(plan.final_set)} members, more than its maxelem "
                            f"{limit}")
    fail_on_problems(problems, "sets", "nothing was changed")


# ---------------------------------------------------------------------------------------------
# References from iptables

_MATCH_SET = re.compile(r"--match-set\s+(\S+)")


def referencing_rules(save_text, name):
    """Rules (``-A CHAIN ...`` lines, prefixed with their table) whose ``--match-set`` names the set."""
    table = None
    rules = []
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and name in line and name in _MATCH_SET.findall(line):
            rules.append(f"{table}: {line}")
    return rules


# ---------------------------------------------------------------------------------------------
# Diff text


def describe(header, members_count, entries, heading, limit):
    """A short, readable description: options, count and the first ``limit`` changed entries."""
    if header is None:
        return "(set absent)\n"
    lines = [render_create("", header).replace("create  ", "", 1), f"# members: {members_count}"]
    shown = heapq.nsmallest(limit, entries)
    if shown:
        lines.append(f"# {heading} (first {len(shown)} of {len(entries)}):")
        lines += list(shown)
    return "\n".join(lines) + "\n"


def validate_name(name):
    if not IPSET_NAME.matches(name):
        raise KubeIpvsError(f"set name {name!r} must be 1-{MAX_SET_NAME} characters: "
                            f"{IPSET_NAME.description}")


# ---------------------------------------------------------------------------------------------
# Many sets in one call

# Keys of a set spec that fall back to the top-level option of the same name when a spec leaves
# them out (name, members and members_file are per set only).
INHERITED_KEYS = ("type", "family", "hashsize", "maxelem", "range", "comment", "timeout", "exclusive", "state")


def merge_set_specs(params):
    """The set specs of a module call: ``sets`` with the top-level options filled in, or the
    single set the top-level options describe."""
    if params.get("sets") is None:
        return [{key: params.get(key) for key in ("name", "members", "members_file", *INHERITED_KEYS)}]
    specs = []
    for entry in params["sets"]:
        spec = {key: params.get(key) if entry.get(key) is None else entry[key] for key in INHERITED_KEYS}
        spec.update(name=entry.get("name"), members=entry.get("members"), members_file=entry.get("members_file"))
        specs.append(spec)
    return specs


def duplicate_names(names):
    """Names listed more than once, in first-seen order."""
    seen, duplicates = set(), []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    return duplicates


class Batch:
    """One ``ipset restore`` input built from per-set chunks, remembering which lines belong to which
    set so a refusal (``Error in line N``) can name the set and what was already applied, and undo it."""

    def __init__(self):
        self.chunks = []

    def add(self, name, method, text):
        if text:
            self.chunks.append((name, method, text))

    @property
    def text(self):
        return "".join(text for _name, _method, text in self.chunks)

    def locate(self, line_number):
        """(name, method, names applied before it) of the chunk holding the 1-based line, or None."""
        first = 1
        for index, (name, method, text) in enumerate(self.chunks):
            count = text.count("\n")
            if first <= line_number < first + count:
                return name, method, list(dict.fromkeys(chunk[0] for chunk in self.chunks[:index]
                                                        if chunk[0] != name))
            first += count
        return None

    def applied(self, line_number):
        """The lines before the 1-based ``line_number``: what ``ipset restore`` took before it stopped."""
        return self.text.split("\n")[:max(line_number - 1, 0)]


_ERROR_LINE = re.compile(r"Error in line (\d+)")


def failed_line(stderr):
    """The batch line ``ipset restore`` stopped at (it counts from 1), or None."""
    match = _ERROR_LINE.search(stderr)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# A module call's sets, validated


class DesiredSet:
    """One validated set spec: what the set should look like."""

    def __init__(self, name, state, header=None, members=None, exclusive=False):
        self.name = name
        self.state = state
        self.header = header
        self.members = members if members is not None else set()
        self.exclusive = exclusive


def desired_set(spec, read_text):
    """Validate one set spec completely (name, type, range, every member) into a DesiredSet.

    ``spec`` is one of merge_set_specs' specs, its family as the ipset option writes it;
    ``read_text(path)`` returns the text of a members file, None when there is none.
    """
    name = spec["name"]
    validate_name(name)
    if spec["state"] == "absent":
        return DesiredSet(name, "absent")
    set_type = spec["type"]
    if not set_type:
        raise KubeIpvsError("type is required when state=present")
    if not isinstance(set_type, str) or set_type not in SET_TYPES:
        raise KubeIpvsError("type {!r} is not one of {}".format(set_type, ", ".join(SET_TYPES)))
    if not isinstance(spec["family"], str) or spec["family"] not in OF_INET:
        raise KubeIpvsError(f"family {spec['family']!r} is not one of {', '.join(OF_INET)}")
    family = OF_INET[spec["family"]]
    port_range = (
        parse_range(spec["range"], set_type)
        if spec["range"] is not None
        else ((0, 65535) if set_type == "bitmap:port" else None)
    )
    if set_type not in ("bitmap:port", "bitmap:ip") and spec["range"] is not None:
        raise KubeIpvsError(f"range only applies to bitmap sets, not {set_type}")
    header = desired_header(set_type, family, spec["hashsize"], spec["maxelem"], port_range, spec["comment"],
                            spec["timeout"])
    entries = spec["members"] or []
    if not isinstance(entries, (list, tuple, set)):
        raise KubeIpvsError(f"members must be a list, not {type(entries).__name__}")
    if spec["members"] is not None and spec["members_file"]:
        raise KubeIpvsError("members and members_file are mutually exclusive")
    if spec["members_file"]:
        text = read_text(spec["members_file"])
        if text is None:
            raise KubeIpvsError(f"members_file {spec['members_file']} does not exist on the node")
        entries = read_members_file(text)
    members = normalise_entries(entries, set_type, family, port_range)
    return DesiredSet(name, "present", header, members, spec["exclusive"])


def validate_all(specs, single, read_text):
    """Every spec validated before anything is read or changed; all problems reported at once."""
    if single:
        return [desired_set(specs[0], read_text)]
    problems = []
    duplicates = duplicate_names(spec["name"] for spec in specs)
    if duplicates:
        problems.append("set names listed more than once: {}".format(", ".join(duplicates)))
    desired = validate_each(specs, lambda spec: desired_set(spec, read_text),
                            lambda index, spec: f"sets[{index}] ({spec['name']})", problems)
    fail_on_problems(problems, "sets", "nothing was changed")
    return desired


def plan_one(wanted, current, swap_threshold):
    """The SetPlan of a DesiredSet against (header or None, members) as read."""
    header, members = current
    if wanted.state == "absent":
        return SetPlan("destroy" if header else "none", to_remove=members)
    return plan_set(wanted.header, wanted.members, header, members, wanted.exclusive, swap_threshold)


def new_types(desired, plans, current):
    """Set types the node's tool must know: those of sets created, swapped or re-created with a new type."""
    return {
        wanted.header["type"]
        for wanted in desired
        if plans[wanted.name].method in ("create", "swap", "recreate")
        and (current[wanted.name][0] is None or current[wanted.name][0]["type"] != wanted.header["type"])
    }


def destructive_actions(desired, plans, current):
    """{name: what would be done} for the sets that would be destroyed (or re-created): those
    iptables rules must not use."""
    actions = {}
    for wanted in desired:
        method = plans[wanted.name].method
        if method == "destroy":
            actions[wanted.name] = "destroy"
        elif method == "recreate":
            actions[wanted.name] = "re-create (type {} -> {})".format(current[wanted.name][0]["type"],
                                                                      wanted.header["type"])
    return actions


def batch_of(desired, plans, current):
    """The one ``ipset restore`` Batch of every changed set: each set's changes that can be undone in
    the order given, then the sets to destroy (state=absent), then the scratch and old sets that
    swaps and re-creations leave - so a refusal anywhere before that last part can be rolled back."""
    batch, destroys, cleanups = Batch(), [], []
    for wanted in desired:
        plan = plans[wanted.name]
        if plan.changed:
            header = wanted.header if wanted.state == "present" else current[wanted.name][0]
            lines, final = render_steps(wanted.name, header, plan)
            batch.add(wanted.name, plan.method, "".join(line + "\n" for line in lines))
            (destroys if plan.method == "destroy" else cleanups).append((wanted.name, final))
    for name, final in destroys:
        batch.add(name, "destroy", "".join(line + "\n" for line in final))
    for name, final in cleanups:
        batch.add(name, "cleanup", "".join(line + "\n" for line in final))
    return batch


def set_result(wanted, plan, header):
    """(the set's result, its header after the run)."""
    after_header = None
    if wanted.state == "present":
        after_header = wanted.header if plan.method in ("create", "swap", "recreate") else header
    return {
        "name": wanted.name,
        "changed": plan.changed,
        "method": plan.method,
        "added_count": len(plan.add_set),
        "removed_count": len(plan.remove_set),
        "members_count": len(plan.final_set) if after_header else 0,
        "reasons": plan.reasons,
    }, after_header


def parse_references(list_text):
    """{set name: references} from ``ipset list -t`` (every set's header, with its ``References``)."""
    references, name = {}, None
    for line in list_text.splitlines():
        if line.startswith("Name: "):
            name = line[len("Name: "):].strip()
        elif line.startswith("References: ") and name is not None:
            count = line[len("References: "):].strip()
            references[name] = int(count) if count.isascii() and count.isdigit() else 0
    return references


def new_headers(desired, plans):
    """The create lines of the sets a batch builds (created, swapped or re-created): what a scratch
    network namespace can try before the node is touched."""
    return [render_create(wanted.name, wanted.header) for wanted in desired
            if plans[wanted.name].method in ("create", "swap", "recreate")]
