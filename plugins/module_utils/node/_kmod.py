# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel modules on the node: what the running kernel has and has loaded, loading and unloading
them, and the owned modules-load.d / modprobe.d files.

Files are read below a root directory (``/`` on a node, a temporary directory in tests). Loading
goes through ``Modprobe``, which runs commands through a callable (AnsibleModule.run_command on a
node), so no Ansible import is needed here. Names, parsing and the plan are pure/_kmod.py's.
"""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import (
    plan_file,
    read_text,
    under_root,
    write_existing,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kmod import (
    PERSISTENCE_OWNER,
    canonical_name,
    module_name_from_path,
    param_text,
    parse_modprobe_options,
    parse_modules_alias,
    parse_modules_builtin,
    parse_modules_dep,
    parse_modules_load,
    parse_proc_modules,
    render_modprobe_options,
    render_modules_load,
    unload_order,
)

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
    """modprobe/rmmod through ``run(argv) -> (rc, stdout, stderr)`` (run with LC_ALL=C).

    ``modprobe_path`` None means the node has no modprobe: that is an error only once a module
    has to be loaded.
    """

    def __init__(self, run, modprobe_path, rmmod_path=None):
        self.run = run
        self.modprobe_path = modprobe_path
        self.rmmod_path = rmmod_path
        self.warnings = []

    def _modprobe(self):
        if not self.modprobe_path:
            raise KubeIpvsError("modprobe is not installed on this node (Debian/Ubuntu/RHEL package: kmod)")
        return self.modprobe_path

    def _run(self, argv):
        """(rc, stderr, failed): modprobe can print FATAL/ERROR with rc 0 in some kmod versions, so
        stderr decides too."""
        rc, _out, err = self.run(argv)
        err = (err or "").strip()
        return rc, err, rc != 0 or "FATAL" in err or "ERROR" in err

    def _check(self, argv):
        rc, err, failed = self._run(argv)
        if failed:
            raise KubeIpvsError(f"{' '.join(argv)} failed (rc={rc}): {err or 'no message'}", rc=rc, stderr=err)
        if err:
            self.warnings.append(f"{' '.join(argv)}: {err}")

    def load(self, name, params=None):
        self._check([self._modprobe(), "--", name] + [f"{k}={param_text(v)}" for k, v in (params or {}).items()])

    def probe(self, name, dry_run=False):
        """(True, "") when modprobe loads ``name`` - or, with ``dry_run`` (``modprobe -n``), finds it
        without loading it - else (False, what modprobe said). A module the kernel cannot provide
        is an answer here, not an error."""
        argv = [self._modprobe(), *(["-n"] if dry_run else []), "--", name]
        rc, err, failed = self._run(argv)
        return (False, err or f"rc={rc}") if failed else (True, "")

    def unload(self, name):
        # rmmod removes exactly this module; ``modprobe -r`` would also remove its now-unused
        # dependencies (ip_vs, nf_conntrack...) that other tools may rely on.
        self._check([self.rmmod_path, "--", name])


def modprobe_for(module, need_rmmod=False, required=True):
    """A Modprobe running through an AnsibleModule, in the C locale so stderr reads the same everywhere.

    ``required`` False finds no modprobe without failing: only a load then does.
    """

    rmmod_path = module.get_bin_path("rmmod", required=True) if need_rmmod else None
    return Modprobe(Commands.of(module).run, module.get_bin_path("modprobe", required=required), rmmod_path)


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


def record_loads(undo, kmods, run, which):
    """Record in ``undo`` (node/_undo.Undo) how to remove the modules the call is about to load: those
    /proc/modules shows at rollback time and not now, each before the modules it uses."""
    before = kmods.loaded()

    def unload():
        added = kmods.loaded() - before
        if not added:
            return
        rmmod = which("rmmod")
        if not rmmod:
            raise KubeIpvsError(f"rmmod is not installed to remove {', '.join(sorted(added))}")
        modprobe = Modprobe(run, None, rmmod)
        for name in unload_order(added, kmods.dependencies()):
            modprobe.unload(name)

    undo.record("kernel modules loaded", unload)
