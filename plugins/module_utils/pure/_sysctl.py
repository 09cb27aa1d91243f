# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel parameters: keys, values compared as the kernel prints them, the owned sysctl.d drop-in,
and the plan of a change. Reading and writing /proc/sys is node/_sysctl.py's job.
"""

from __future__ import annotations

import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._files import OWNED_HEADER
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import SYSCTL_KEY_PART, check_text

# Keys that exist only once a module is loaded. systemd-sysctl silently skips them at boot
# unless systemd-modules-load (which runs first) loads the module.
MODULE_DEPENDENT_KEYS = (
    ("net.ipv4.vs.", "ip_vs"),
    ("net.netfilter.", "nf_conntrack"),
    ("net.nf_conntrack_max", "nf_conntrack"),
    ("net.bridge.", "br_netfilter"),
)


DEFAULT_SYSCTL_FILE = "/etc/sysctl.d/90-kubeipvs-node.conf"


INTEGER = re.compile(r"-?[0-9]+")


def key_parts(key):
    """Path components of a key: dots separate them, unless the key uses ``/`` (then dots are
    literal, as in ``net/ipv4/conf/eth0.100/rp_filter``), like sysctl(8)."""
    if not isinstance(key, str) or not key.strip(" "):
        raise KubeIpvsError(f"sysctl key {key!r} is not valid (dotted name such as net.ipv4.ip_forward)")
    key = key.strip(" ")
    parts = key.split("/") if "/" in key else key.split(".")
    # a leading '-' means "ignore a failure" to systemd-sysctl: no key of the kernel starts with one
    if key.startswith("-") or not all(SYSCTL_KEY_PART.matches(part) for part in parts):
        raise KubeIpvsError(f"sysctl key {key!r} is not valid (dotted name such as net.ipv4.ip_forward; "
                            f"{SYSCTL_KEY_PART.description}, no control characters)")
    return parts


def proc_path(key):
    return "/proc/sys/" + "/".join(key_parts(key))


def required_module(key):
    """The module that creates ``key``, or None for keys the core kernel always has."""
    dotted = key.strip().replace("/", ".")
    for prefix, module in MODULE_DEPENDENT_KEYS:
        if dotted == prefix or dotted.startswith(prefix):
            return module
    return None


def value_text(value, key="value"):
    """A wanted value as text: YAML booleans are 1/0, lists are space-separated vectors; integers and
    strings as they are. Anything else (a mapping, a float, None) and any control character fail."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (list, tuple)) for item in value):
            raise KubeIpvsError(f"sysctl {key}: a list value holds integers or strings, not lists", key=key)
        return " ".join(value_text(item, key) for item in value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise KubeIpvsError(f"sysctl {key}: the value must be an integer, a string or a list of them, not "
                            f"{value!r}"[:300], key=key)
    return " ".join(check_text(value, f"sysctl {key}", allow="\t").split())


def kernel_text(text):
    """What /proc/sys printed, with tabs/newlines between vector fields folded to one space."""
    return " ".join(text.split())


def is_numeric(text):
    fields = text.split()
    return bool(fields) and all(INTEGER.fullmatch(field) for field in fields)


def normalise_value(key, wanted, current):
    """``wanted`` in the form the kernel will print, checked against ``current`` (its printed value).

    A key whose current value is integers (one or a vector) only takes integers, as many as it
    prints; anything else fails before any change.
    """
    text = value_text(wanted, key)
    if not text:
        raise KubeIpvsError(f"sysctl {key}: the value must not be empty")
    if current is None or not is_numeric(current):
        return text
    fields = text.split()
    if not all(INTEGER.fullmatch(field) for field in fields):
        raise KubeIpvsError(
            f"sysctl {key} is numeric (the kernel prints {current!r}) but the value {wanted!r} is not an integer",
            key=key,
        )
    if len(fields) != len(current.split()):
        raise KubeIpvsError(
            f"sysctl {key} takes {len(current.split())} integers (the kernel prints {current!r}), got {wanted!r}",
            key=key,
        )
    return " ".join(str(int(field)) for field in fields)


def render_dropin(values, owner):
    """An owned sysctl.d file setting ``values`` ({key: text}) in the given order."""
    return OWNED_HEADER.format(owner=owner) + "".join(f"{key} = {text}\n" for key, text in values.items())


def parse_dropin(text):
    """``key = value`` assignments of a sysctl.d file ({key: value}); a leading ``-`` is dropped."""
    values = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        values[key.strip().lstrip("-").replace("/", ".")] = kernel_text(value)
    return values


class SysctlPlan:
    """Per-key before/after of the live values and the owned file's change."""

    def __init__(self):
        self.before = {}  # key -> printed value or None (module not loaded yet)
        self.after = {}
        self.writes = {}  # key -> text to write

    def live_diff(self):
        def text(values):
            return "".join(f"{key} = {'<absent>' if values[key] is None else values[key]}\n" for key in values)

        return {
            "before_header": "sysctl (live)",
            "after_header": "sysctl (live)",
            "before": text(self.before),
            "after": text(self.after),
        }


def plan_live(sysctl, settings, apply):
    """Normalise every wanted value against what the kernel prints now; raises before any change."""
    plan = SysctlPlan()
    wanted = {}
    for key, value in settings.items():
        current = sysctl.read(key)
        text = normalise_value(key, value, current)
        wanted[key] = text
        plan.before[key] = current
        plan.after[key] = text if apply else current
        if apply and current != text:
            plan.writes[key] = text
    return plan, wanted


def missing_keys(sysctl, keys):
    """Keys /proc/sys does not show, split into {module: [keys]} and keys nothing can create."""
    by_module = {}
    unknown = []
    for key in keys:
        if sysctl.read(key) is not None:
            continue
        module = required_module(key)
        if module:
            by_module.setdefault(module, []).append(key)
        else:
            unknown.append(key)
    return by_module, unknown
