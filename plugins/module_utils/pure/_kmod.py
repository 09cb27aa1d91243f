# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel modules: names, the files that list or configure them, parameters, and the plan of a
kernel_module call. Reading the running kernel and loading modules is node/_kmod.py's job.
"""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._files import OWNED_HEADER
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    DROPIN_NAME,
    MODULE_NAME,
    MODULE_PARAMETER,
    MODULE_PARAMETER_VALUE,
    check_text,
)

# modules.dep / modules.builtin name files with these endings (Debian ships plain .ko,
# Fedora and Arch compress with xz or zstd).
MODULE_FILE_SUFFIXES = (".ko.zst", ".ko.xz", ".ko.gz", ".ko")


# One owner name for the shared drop-ins: kernel_module, sysctl and conntrack all add entries.
PERSISTENCE_OWNER = "kernel modules"


TRUE_WORDS = ("1", "y", "yes", "true", "on")


FALSE_WORDS = ("0", "n", "no", "false", "off")


def canonical_name(name):
    """modprobe treats ``-`` and ``_`` in module names as the same character."""
    return name.strip().replace("-", "_")


def module_name(name):
    """A module name given by the user, checked (it becomes a modprobe argument and a line of an owned
    modules-load.d file) and in its canonical spelling."""
    text = check_text(name, "name").strip(" ")
    return canonical_name(MODULE_NAME.check(text, "name"))


def module_name_from_path(path):
    """``kernel/net/netfilter/ipvs/ip_vs.ko.xz`` -> ``ip_vs``; None for anything that is not a module."""
    base = os.path.basename(path.strip())
    for suffix in MODULE_FILE_SUFFIXES:
        if base.endswith(suffix):
            return canonical_name(base[: -len(suffix)])
    return None


def parse_modules_builtin(text):
    """Names in ``modules.builtin`` (one module path per line)."""
    names = set()
    for line in text.splitlines():
        name = module_name_from_path(line)
        if name:
            names.add(name)
    return names


def parse_modules_dep(text):
    """``modules.dep`` as {module: [dependencies]}."""
    deps = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        target, _sep, rest = line.partition(":")
        name = module_name_from_path(target)
        if name:
            deps[name] = [dep for dep in (module_name_from_path(p) for p in rest.split()) if dep]
    return deps


def parse_modules_alias(text):
    """Plain aliases from ``modules.alias`` ({alias: module}); wildcard (hardware) aliases are skipped."""
    aliases = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and not any(c in parts[1] for c in "*?["):
            aliases.setdefault(canonical_name(parts[1]), canonical_name(parts[2]))
    return aliases


def parse_proc_modules(text):
    """Names of loaded modules from ``/proc/modules``."""
    return {canonical_name(line.split()[0]) for line in text.splitlines() if line.strip()}


def parse_modules_load(text):
    """Module names in a modules-load.d file (``#`` and ``;`` start comments)."""
    names = []
    for line in (text or "").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry and not entry.startswith(";"):
            names.append(canonical_name(entry))
    return names


def render_modules_load(names, owner):
    """The modules-load.d file for ``names``; None when there is nothing left to load."""
    if not names:
        return None
    return OWNED_HEADER.format(owner=owner) + "".join(f"{name}\n" for name in sorted(set(names)))


def parse_modprobe_options(text):
    """``options <module> k=v ...`` lines as {module: {k: v}}; other directives are ignored."""
    options = {}
    for line in (text or "").splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "options":
            params = options.setdefault(canonical_name(parts[1]), {})
            for item in parts[2:]:
                key, _sep, value = item.partition("=")
                params[key] = value
    return options


def render_modprobe_options(options, owner):
    """The modprobe.d file holding ``options`` ({module: {k: v}}); None when it would be empty."""
    lines = []
    for name in sorted(options):
        params = options[name]
        if params:
            lines.append("options " + name + "".join(f" {k}={params[k]}" for k in sorted(params)) + "\n")
    if not lines:
        return None
    return OWNED_HEADER.format(owner=owner) + "".join(lines)


def param_text(value):
    """A wanted parameter as modprobe gets it (YAML booleans become 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


def same_param(wanted, current):
    """Whether ``wanted`` equals what sysfs prints; bool parameters print Y/N."""
    wanted = param_text(wanted)
    if current in ("Y", "N"):
        word = wanted.lower()
        if word in TRUE_WORDS:
            return current == "Y"
        if word in FALSE_WORDS:
            return current == "N"
    return wanted == current


def validate_params(params):
    """Parameter names and values modprobe.d can carry unquoted; raises before anything changes."""
    if params is not None and not isinstance(params, dict):
        raise KubeIpvsError(f"params must be a mapping of parameter names to values, not {params!r}"[:300])
    for key, value in (params or {}).items():
        if not MODULE_PARAMETER.matches(key):
            raise KubeIpvsError(f"module parameter name {key!r} is not valid (letters, digits, underscore)"[:300])
        if value is None or isinstance(value, (dict, list, float)):
            raise KubeIpvsError(f"module parameter {key}={value!r}: give a string, an integer or a boolean"[:300])
        text = param_text(value)
        if not MODULE_PARAMETER_VALUE.matches(text):
            raise KubeIpvsError(f"module parameter {key}={value!r}: the value must be non-empty without spaces, "
                                "'#', quotes, backslashes or control characters"[:300])


def validate_owned_path(path, directory, option):
    """Owned drop-ins live directly in their directory and end in .conf (others are not read); the
    file name follows one grammar (no control character, no leading '-' or '.')."""
    if (not isinstance(path, str) or os.path.dirname(path) != directory
            or not DROPIN_NAME.matches(os.path.basename(path))):
        raise KubeIpvsError(f"{option} must be a .conf file directly under {directory}/ ({DROPIN_NAME.description}), "
                            f"got {path!r}"[:400])


class ModulePlan:
    """What to do to the running kernel for a kernel_module call, and what to tell the user."""

    def __init__(self):
        self.actions = []  # (verb, name, params): load | unload | reload
        self.warnings = []
        self.drift = {}  # module -> {param: {"wanted": w, "current": c}}
        self.before = {}  # module -> "loaded" | "builtin" | "absent"
        self.after = {}

    def live_diff(self):
        def text(states):
            return "".join(f"{name}: {states[name]}\n" for name in sorted(states))

        return {
            "before_header": "kernel modules (live)",
            "after_header": "kernel modules (live)",
            "before": text(self.before),
            "after": text(self.after),
        }


def plan_modules(kmods, names, state, params, reload_on_param_change):
    """Resolve every name first (an unknown one fails before anything is done), then plan."""
    resolved = [kmods.resolve(name) for name in names]
    validate_params(params)
    loaded = kmods.loaded()
    plan = ModulePlan()
    for name, kind in resolved:
        if name in plan.before:
            continue  # named twice (or by an alias and its module)
        if kind == "builtin":
            plan.before[name] = plan.after[name] = "builtin"
            if state == "absent":
                raise KubeIpvsError(f"kernel module {name} is built into kernel {kmods.release} and cannot be unloaded")
            if params:
                drift = _drift(params, kmods.params(name))
                if drift:
                    plan.drift[name] = drift
                    plan.warnings.append(
                        f"{name} is built into kernel {kmods.release}: its parameters {sorted(drift)} can only"
                        f" be set on the kernel command line ({name}.<param>=<value>)"
                    )
            continue
        is_loaded = name in loaded
        plan.before[name] = "loaded" if is_loaded else "absent"
        if state == "absent":
            plan.after[name] = "absent"
            if is_loaded:
                plan.actions.append(("unload", name, None))
            continue
        plan.after[name] = "loaded"
        if not is_loaded:
            plan.actions.append(("load", name, params))
            continue
        drift = _drift(params or {}, kmods.params(name))
        if not drift:
            continue
        plan.drift[name] = drift
        if reload_on_param_change:
            plan.actions.append(("reload", name, params))
            plan.after[name] = "loaded (reloaded: " + ", ".join(f"{k}={param_text(params[k])}" for k in drift) + ")"
        else:
            plan.warnings.append(
                f"{name} is loaded with other parameters than wanted ("
                + ", ".join(f"{k}: {v['current']} != {v['wanted']}" for k, v in sorted(drift.items()))
                + "); set reload_on_param_change: true to reload it, or reboot (the wanted values are persisted)"
            )
    return plan


def _drift(wanted, current):
    """Parameters whose sysfs value differs from the wanted one (unreadable ones cannot drift)."""
    drift = {}
    for key, value in wanted.items():
        if key in current and not same_param(value, current[key]):
            drift[key] = {"wanted": param_text(value), "current": current[key]}
    return drift


def unload_order(names, dependencies):
    """``names`` in an order rmmod can remove them: a module before the modules it uses (``dependencies``
    is modules.dep as {module: [dependencies]})."""
    remaining, order = set(names), []
    while remaining:
        used = {dep for name in remaining for dep in dependencies.get(name, ()) if dep in remaining}
        free = sorted(remaining - used) or sorted(remaining)  # a cycle cannot be ordered: try them all
        order += free
        remaining -= set(free)
    return order
