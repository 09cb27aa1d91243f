# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel modules: what the running kernel has, what is loaded, parameters, boot persistence.

Reading and planning are pure Python over a root directory (``/`` on a node, a temporary
directory in tests). Loading goes through ``Modprobe``, which runs commands through a callable
(AnsibleModule.run_command on a node), so no Ansible import is needed here.
"""

from __future__ import annotations

import os
import re

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils._files import (
    OWNED_HEADER,
    plan_file,
    read_text,
    under_root,
    write_existing,
)

# modules.dep / modules.builtin name files with these endings (Debian ships plain .ko,
# Fedora and Arch compress with xz or zstd).
MODULE_FILE_SUFFIXES = (".ko.zst", ".ko.xz", ".ko.gz", ".ko")
DEFAULT_MODULES_LOAD_FILE = "/etc/modules-load.d/kubeipvs-node.conf"
DEFAULT_MODPROBE_FILE = "/etc/modprobe.d/kubeipvs-node.conf"
# Where systemd-modules-load looks, plus Debian's /etc/modules (read by the same service).
MODULES_LOAD_DIRS = (
    "/etc/modules-load.d",
    "/run/modules-load.d",
    "/usr/local/lib/modules-load.d",
    "/usr/lib/modules-load.d",
    "/lib/modules-load.d",
)
DEBIAN_MODULES_FILE = "/etc/modules"
PARAM_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# One owner name for the shared drop-ins: kernel_module, sysctl and conntrack all add entries.
PERSISTENCE_OWNER = "kernel modules"
TRUE_WORDS = ("1", "y", "yes", "true", "on")
FALSE_WORDS = ("0", "n", "no", "false", "off")


def canonical_name(name):
    """modprobe treats ``-`` and ``_`` in module names as the same character."""
    return name.strip().replace("-", "_")


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
    for key, value in (params or {}).items():
        if not PARAM_NAME.match(str(key)):
            raise KubeIpvsError(f"module parameter name {key!r} is not valid (letters, digits, underscore)")
        text = param_text(value)
        if not text or any(c.isspace() for c in text) or "#" in text:
            raise KubeIpvsError(f"module parameter {key}={value!r}: the value must be non-empty without spaces or '#'")


def validate_owned_path(path, directory, option):
    """Owned drop-ins live directly in their directory and end in .conf (others are not read)."""
    if os.path.dirname(path) != directory or not path.endswith(".conf") or path == directory + "/.conf":
        raise KubeIpvsError(f"{option} must be a .conf file directly under {directory}/, got {path!r}")


class KernelModules:
    """What the running kernel offers and has loaded, read from ``root``."""

    def __init__(self, root="/", release=None):
        self.root = root
        self.release = release or os.uname().release
        self._builtin = None
        self._deps = None
        self._aliases = None

    @property
    def modules_dir(self):
        return f"/lib/modules/{self.release}"

    def _read(self, path):
        return read_text(under_root(self.root, path))

    def builtin(self):
        if self._builtin is None:
            self._builtin = parse_modules_builtin(self._read(f"{self.modules_dir}/modules.builtin") or "")
        return self._builtin

    def dependencies(self):
        """{module: [dependencies]} for every loadable module of this kernel."""
        if self._deps is None:
            text = self._read(f"{self.modules_dir}/modules.dep")
            self._deps = parse_modules_dep(text) if text is not None else self._scan_tree()
        return self._deps

    def _scan_tree(self):
        # No modules.dep (depmod never ran): the files themselves say what exists.
        found = {}
        for _dirpath, _dirs, files in os.walk(under_root(self.root, self.modules_dir)):
            for file_name in files:
                name = module_name_from_path(file_name)
                if name:
                    found[name] = []
        return found

    def aliases(self):
        if self._aliases is None:
            self._aliases = parse_modules_alias(self._read(f"{self.modules_dir}/modules.alias") or "")
        return self._aliases

    def resolve(self, name):
        """(real module name, "builtin" | "loadable"); fails naming the kernel and the path searched."""
        wanted = canonical_name(name)
        for candidate in (wanted, self.aliases().get(wanted)):
            if candidate in self.builtin():
                return candidate, "builtin"
            if candidate in self.dependencies():
                return candidate, "loadable"
        raise KubeIpvsError(
            f"kernel module {name!r} does not exist for the running kernel {self.release}"
            f" (searched {self.modules_dir}: modules.builtin, modules.dep, modules.alias)",
            kernel_release=self.release,
            searched=self.modules_dir,
        )

    def loaded(self):
        return parse_proc_modules(self._read("/proc/modules") or "")

    def is_present(self, name):
        """Loaded or built in (built-in modules never show in /proc/modules)."""
        return name in self.builtin() or name in self.loaded()

    def params(self, name):
        """Readable parameters of a loaded module as sysfs prints them."""
        directory = under_root(self.root, f"/sys/module/{name}/parameters")
        values = {}
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            return values
        for entry in entries:
            try:
                with open(os.path.join(directory, entry), encoding="utf-8") as handle:
                    values[entry] = handle.read().strip()
            except OSError:
                continue  # write-only parameter (mode 0200): nothing to compare
        return values

    def write_param(self, name, key, value):
        """Change a runtime-writable parameter through sysfs; errors explain the usual causes."""
        path = f"/sys/module/{name}/parameters/{key}"
        try:
            write_existing(under_root(self.root, path), str(value))
        except OSError as error:
            raise KubeIpvsError(f"cannot write {value} to {path}: {error.strerror}", path=path) from error

    def with_dependencies(self, names):
        """``names`` plus everything they pull in when loaded."""
        deps = self.dependencies()
        seen = set()
        todo = [canonical_name(n) for n in names]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(deps.get(name, []))
        return seen

    def boot_modules(self):
        """Modules systemd-modules-load loads at boot (listed anywhere, plus what they depend on)."""
        listed = parse_modules_load(self._read(DEBIAN_MODULES_FILE))
        for directory in MODULES_LOAD_DIRS:
            try:
                files = sorted(os.listdir(under_root(self.root, directory)))
            except OSError:
                continue
            for file_name in files:
                if file_name.endswith(".conf"):
                    listed.extend(parse_modules_load(self._read(f"{directory}/{file_name}")))
        return self.with_dependencies(listed)


class Modprobe:
    """modprobe/rmmod through ``run(argv) -> (rc, stdout, stderr)`` (run with LC_ALL=C)."""

    def __init__(self, run, modprobe_path, rmmod_path=None):
        self.run = run
        self.modprobe_path = modprobe_path
        self.rmmod_path = rmmod_path
        self.warnings = []

    def _check(self, argv):
        rc, _out, err = self.run(argv)
        err = (err or "").strip()
        # modprobe can print FATAL/ERROR with rc 0 in some kmod versions: stderr decides too.
        if rc != 0 or "FATAL" in err or "ERROR" in err:
            raise KubeIpvsError(f"{' '.join(argv)} failed (rc={rc}): {err or 'no message'}", rc=rc, stderr=err)
        if err:
            self.warnings.append(f"{' '.join(argv)}: {err}")

    def load(self, name, params=None):
        self._check([self.modprobe_path, "--", name] + [f"{k}={param_text(v)}" for k, v in (params or {}).items()])

    def unload(self, name):
        # rmmod removes exactly this module; ``modprobe -r`` would also remove its now-unused
        # dependencies (ip_vs, nf_conntrack...) that other tools may rely on.
        self._check([self.rmmod_path, "--", name])


def modprobe_for(module, need_rmmod=False):
    """A Modprobe running through an AnsibleModule, in the C locale so stderr reads the same everywhere."""

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})

    rmmod_path = module.get_bin_path("rmmod", required=True) if need_rmmod else None
    return Modprobe(run, module.get_bin_path("modprobe", required=True), rmmod_path)


def plan_persistence(kmods, load_path, options_path, present, absent, options_update, merge_options=False):
    """FileChanges for the owned modules-load.d and modprobe.d files.

    ``present``/``absent`` are module names to add/remove from the load list; ``options_update``
    maps a module to its wanted parameters (``{}`` drops its options line; modules not in the
    map keep their line; ``merge_options`` keeps the module's other parameters). Entries written
    by other tasks into the same owned file are kept.
    """
    load_change = plan_file(kmods.root, load_path, None)
    names = [n for n in parse_modules_load(load_change.before) if n not in absent]
    names.extend(n for n in present if n not in names)
    load_change.after = render_modules_load(names, PERSISTENCE_OWNER)

    options_change = plan_file(kmods.root, options_path, None)
    options = parse_modprobe_options(options_change.before)
    for name, params in options_update.items():
        wanted = {k: param_text(v) for k, v in (params or {}).items()}
        options[name] = dict(options.get(name, {}), **wanted) if merge_options else wanted
    options_change.after = render_modprobe_options(options, PERSISTENCE_OWNER)
    return [load_change, options_change]


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


def apply_module_plan(kmods, modprobe, plan):
    """Run the planned loads/unloads and check the kernel now shows the wanted state."""
    for verb, name, params in plan.actions:
        if verb in ("unload", "reload"):
            modprobe.unload(name)
        if verb in ("load", "reload"):
            modprobe.load(name, params)
    loaded = kmods.loaded()
    for verb, name, _params in plan.actions:
        if (verb == "unload") == (name in loaded):
            raise KubeIpvsError(f"{verb} of kernel module {name} reported success but /proc/modules disagrees")
