# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Text that reaches a tool's input, a file, a netlink message or an API path: which characters may
appear in it, and the grammar of every kind of name the collection writes.

The one rule: a string is checked here before anything runs. No control character ever passes
(``check_text``; the nftables body alone keeps newline and tab, which are its own syntax), a name
must match its grammar as a whole (``Name``: no ``$`` that lets a trailing newline through), and an
IP address is a plain one (``ip_address``, ``ip_network``: Python's ``ipaddress`` would also take an
IPv6 scope such as ``fe80::1%eth0`` with any text after the ``%``).
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

# C0 and C1 controls, DEL, the invisible format characters (soft hyphen, zero-width and bidi
# controls, the byte order mark), line and paragraph separators, and lone surrogates (which no
# file or tool can even encode). Python's str.splitlines() breaks at several of these; the tools
# break at "\n" alone, so none of them may pass where a line is a command.
CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff]"
)


def control_character(text, allow=""):
    """(position, character) of the first character of ``text`` that is not allowed, or None."""
    for match in CONTROL.finditer(text):
        if match.group() not in allow:
            return match.start(), match.group()
    return None


def check_text(value, what, allow=""):
    """``value`` itself when it is a string without control characters (those in ``allow`` excepted);
    otherwise a KubeIpvsError naming ``what`` and the first offending character."""
    if not isinstance(value, str):
        raise KubeIpvsError(f"{what}: expected a string, got {type(value).__name__} {value!r}"[:300])
    found = control_character(value, allow)
    if found is not None:
        position, character = found
        raise KubeIpvsError(f"{what}: {_shown(value)} holds the control character {character!r} at position "
                            f"{position}; control characters are never passed on")
    return value


def _shown(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


class Name:
    """The grammar of one kind of name: a regular expression the whole name must match, a byte
    limit, and names that are never allowed (``.``, ``..``)."""

    def __init__(self, pattern, description, max_bytes=None, reserved=()):
        self.pattern = re.compile(pattern)
        self.description = description
        self.max_bytes = max_bytes
        self.reserved = frozenset(reserved)

    def matches(self, value):
        return (isinstance(value, str) and control_character(value) is None
                and self.pattern.fullmatch(value) is not None and value not in self.reserved
                and (self.max_bytes is None or len(value.encode("utf-8")) <= self.max_bytes))

    def check(self, value, what):
        """``value`` when it is such a name; otherwise a KubeIpvsError naming ``what`` and the grammar."""
        check_text(value, what)
        if not self.matches(value):
            limit = f", at most {self.max_bytes} bytes" if self.max_bytes else ""
            raise KubeIpvsError(f"{what}: {_shown(value)} is not {self.description}{limit}")
        return value


# --- the grammars --------------------------------------------------------------------------------

# A Linux interface name (the kernel's dev_valid_name): 1-15 bytes, no '/', ':' or white space.
LINK_NAME = Name(r"[^/:\s]+", "an interface name (no '/', ':' or spaces)", max_bytes=15, reserved=(".", ".."))
# nft's identifier (its scanner's string token), kept to nft's 256-byte limit of a name.
NFT_IDENTIFIER = Name(r"[A-Za-z_.][A-Za-z0-9/_.-]*", "an nftables name (a letter, '_' or '.' first, then "
                      "letters, digits, '/', '_', '.', '-')", max_bytes=256)
# An ipset name: one word of ipset restore's input and one argument of the ipset tool, so no white
# space, no quote and no leading '-' (the tool would read it as an option).
IPSET_NAME = Name(r"[A-Za-z0-9_.:+@%=][A-Za-z0-9_.:+@%=-]*", "an ipset name (letters, digits, '_', '.', ':', '+', "
                  "'@', '%', '=', '-', not first)", max_bytes=31)
# An iptables chain name: one word of iptables-restore's input; '-' or '!' first would read as an
# option or a negation.
CHAIN_NAME = Name(r"[A-Za-z0-9_.:+@%=][A-Za-z0-9_.:+@%=-]*", "an iptables chain name (letters, digits, '_', '.', "
                  "':', '+', '@', '%', '=', '-', not first)", max_bytes=28)
# One component of a sysctl key (a file or directory name under /proc/sys).
SYSCTL_KEY_PART = Name(r"[A-Za-z0-9_.:@+-]+", "a sysctl key component (letters, digits, '_', '.', ':', '@', '+', '-')",
                       reserved=(".", ".."))
# A kernel module name and a module parameter name, as modprobe and modprobe.d take them.
MODULE_NAME = Name(r"[A-Za-z0-9_-]+", "a kernel module name (letters, digits, '_', '-')", max_bytes=55)
MODULE_PARAMETER = Name(r"[A-Za-z0-9_]+", "a module parameter name (letters, digits, '_')", max_bytes=64)
# A module parameter value as modprobe.d carries it unquoted.
MODULE_PARAMETER_VALUE = Name(r"[^\s#\"'\\]+", "a module parameter value (no spaces, '#', quotes or '\\')",
                              max_bytes=1024)
# The file name of an owned drop-in (sysctl.d, modules-load.d, modprobe.d).
DROPIN_NAME = Name(r"[A-Za-z0-9_@+][A-Za-z0-9_.@+-]*\.conf", "a drop-in file name (letters, digits, '_', '.', '@', "
                   "'+', '-', ending in .conf)", max_bytes=255)
# Kubernetes names (apimachinery's validation): a DNS-1123 label (namespaces), a DNS-1123
# subdomain (most object names, node names), a DNS-1035 label (Service names), a ConfigMap key.
DNS1123_LABEL = Name(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", "a DNS-1123 label (lower-case letters, digits, '-')",
                     max_bytes=63)
DNS1123_SUBDOMAIN = Name(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
                         "a DNS-1123 subdomain (lower-case letters, digits, '-', '.')", max_bytes=253)
DNS1035_LABEL = Name(r"[a-z]([-a-z0-9]*[a-z0-9])?", "a DNS-1035 label (a lower-case letter first)", max_bytes=63)
CONFIGMAP_KEY = Name(r"[-._a-zA-Z0-9]+", "a ConfigMap key (letters, digits, '-', '_', '.')", max_bytes=253,
                     reserved=(".", ".."))
# A name that is one path segment of a Kubernetes API URL (RBAC objects allow ':' and more).
PATH_SEGMENT = Name(r"[^/%\s?#]+", "a Kubernetes object name (no '/', '%', '?', '#' or spaces)", max_bytes=253,
                    reserved=(".", ".."))


# --- addresses -----------------------------------------------------------------------------------

def _plain(value, what, kind):
    text = check_text(value, what).strip()
    if "%" in text:
        raise KubeIpvsError(f"{what}: {_shown(value)} carries an IPv6 scope ('%'); give a plain {kind}")
    return text


def ip_address(value, what):
    """An ipaddress address from a plain address text (no scope, no control characters)."""
    text = _plain(value, what, "address")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise KubeIpvsError(f"{what}: {_shown(value)} is not an IP address") from None


def ip_network(value, what, strict=False):
    """An ipaddress network from a plain CIDR text (no scope, no control characters)."""
    text = _plain(value, what, "network")
    try:
        return ipaddress.ip_network(text, strict=strict)
    except ValueError as error:
        raise KubeIpvsError(f"{what}: {_shown(value)} is not a network in CIDR notation ({error})") from None


# --- numbers -------------------------------------------------------------------------------------

DECIMAL = re.compile(r"[0-9]+")
HEX_OR_DECIMAL = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")


def integer(value, what, low, high):
    """``value`` as an int in [low, high]: a Python int (not a bool) or a text of ASCII digits (or
    0x-hex); anything else - floats, infinities, signs, other digits - is a KubeIpvsError."""
    if isinstance(value, bool):
        raise KubeIpvsError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and HEX_OR_DECIMAL.fullmatch(value.strip()):
        number = int(value.strip(), 0) if value.strip()[:2].lower() == "0x" else int(value.strip())
    else:
        raise KubeIpvsError(f"{what}: expected an integer {low}-{high}, got {_shown(value)}"[:300])
    if not low <= number <= high:
        raise KubeIpvsError(f"{what}: {number} is outside {low}-{high}"[:300])
    return number
