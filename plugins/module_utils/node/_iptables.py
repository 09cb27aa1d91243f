# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables on the node: which backend (nf_tables or legacy) holds a table, its save/restore commands,
and reading a table. Rules, plans and batches are pure/_iptables.py's job.

No Ansible import: commands are found through ``which(name) -> path or None`` and run through
``run(argv) -> (rc, stdout, stderr)``, and /proc is read below ``proc_root`` so tests can give a fake one.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipset import Ipsets
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._iptables import (
    TableState,
    kube_chains,
    parse_save,
    scratch_batch,
    set_dimensions,
    stand_in_set_line,
    take_canonical,
)

COMMAND = {IPV4: "iptables", IPV6: "ip6tables"}


# Tables the legacy (x_tables) backend has in this network namespace; the nf_tables backend has no such list.
LEGACY_TABLES_FILE = {IPV4: "/proc/net/ip_tables_names", IPV6: "/proc/net/ip6_tables_names"}


class BackendTools:
    """save/restore commands of one backend and family (``iptables-nft-save``, ``ip6tables-legacy-restore``...).

    With ``plain_fallback`` a missing command is replaced by its plain name (``iptables-save``), which
    older distributions ship alone. ``save`` or ``restore`` is None when not found; ``require`` fails then.
    """

    def __init__(self, which, backend, family, plain_fallback=True):
        command = COMMAND[family]
        self.backend = backend
        self.family = family
        self.save = which(f"{command}-{backend}-save")
        self.restore = which(f"{command}-{backend}-restore")
        if plain_fallback:
            self.save = self.save or which(f"{command}-save")
            self.restore = self.restore or which(f"{command}-restore")

    def require(self):
        if not self.save or not self.restore:
            command = COMMAND[self.family]
            raise KubeIpvsError(
                f"{command}-save and {command}-restore are needed on the node ({self.backend} backend)"
            )
        return self


def legacy_tables(family, proc_root="/"):
    """Names of the tables the legacy backend has loaded; [] when none (or x_tables is not loaded).

    Ask this before reading a legacy table: ``iptables-legacy-save -t TABLE`` creates an absent one
    (and makes iptables-nft warn about legacy tables forever after).
    """
    try:
        with open(os.path.join(proc_root, LEGACY_TABLES_FILE[family].lstrip("/"))) as handle:
            return handle.read().split()
    except OSError:
        return []


def default_backend(which, run, family):
    """The backend the plain ``iptables`` (``ip6tables``) command uses: ``nft`` or ``legacy``."""
    binary = which(COMMAND[family])
    if not binary:
        raise KubeIpvsError("iptables is not installed on the node")
    # Debian's alternatives resolve to xtables-legacy-multi or xtables-nft-multi; only the file
    # name says which (a directory on the way may be called anything).
    target = os.path.basename(os.path.realpath(binary))
    if "legacy" in target:
        return "legacy"
    if "nft" in target:
        return "nft"
    out = run([binary, "--version"])[1]
    return "legacy" if "legacy" in out else "nft"


def read_table(run, tools, table):
    """TableState of ``table`` through ``tools.save``; empty when the table does not exist."""
    rc, out, err = run([tools.save, "-t", table])
    if rc != 0:
        if "does not exist" in err:
            return TableState()
        raise KubeIpvsError(f"{tools.save} -t {table} failed: {err.strip()}", rc=rc)
    return parse_save(out, table)


def choose_backend(which, run, family, backend, table, names, proc_root="/"):
    """(BackendTools, TableState of ``table``) for ``backend`` nft, legacy or auto.

    auto: the backend whose table holds KUBE- chains (or one of ``names``) wins, else the default one.
    The other backend is read only when its own save command exists and, for legacy, when the
    table is already loaded.
    """
    if backend != "auto":
        tools = BackendTools(which, backend, family).require()
        return tools, read_table(run, tools, table)
    default = default_backend(which, run, family)
    tools = BackendTools(which, default, family).require()
    state = read_table(run, tools, table)
    if kube_chains(state) or any(name in state.chains for name in names):
        return tools, state
    other = "legacy" if default == "nft" else "nft"
    if other == "legacy" and table not in legacy_tables(family, proc_root):
        # Reading an unloaded legacy table would create it (and make iptables-nft warn forever after).
        return tools, state
    if which(f"{COMMAND[family]}-{other}-save"):
        other_tools = BackendTools(which, other, family).require()
        other_state = read_table(run, other_tools, table)
        if kube_chains(other_state) or any(name in other_state.chains for name in names):
            return other_tools, other_state
    return tools, state


# ---------------------------------------------------------------------------------------------
# One family's iptables, as the modules use it

LOCK_WAIT_SECONDS = "5"
# Runs inside a network namespace of its own (unshare --net), which dies with the shell: creates the
# sets the rules match, restores the rules and prints the table the way iptables stores them.
SCRATCH_SCRIPT = 'set -e; if [ -s "$1" ]; then ipset restore -file "$1"; fi; "$2" --noflush < "$3"; exec "$4" -t "$5"'


class Iptables:
    """One family's iptables through ``commands`` (node/_commands.Commands): which backend holds a
    table, the scratch-namespace round trip that canonicalises and validates rules, and restoring a
    batch under the xtables lock. ``proc_root`` lets tests give a fake /proc."""

    def __init__(self, commands, family, proc_root="/"):
        self.commands = commands
        self.family = family
        self.proc_root = proc_root

    def choose(self, backend, table, names):
        """(BackendTools, TableState of ``table``) for ``backend`` nft, legacy or auto (see choose_backend)."""
        return choose_backend(self.commands.which, self.commands.run, self.family, backend, table, names,
                              self.proc_root)

    def tools(self, backend, plain_fallback=True):
        return BackendTools(self.commands.which, backend, self.family, plain_fallback=plain_fallback)

    def canonicalise(self, tools, table, state, wanted, declared, check_mode=False):
        """Apply ``wanted`` chains' rules and jumps in a scratch network namespace and read them back as
        iptables prints them; the DesiredChains get the canonical forms. Returns warnings.

        Also the validation step: a rule iptables rejects fails here, before the node is touched. A
        rule that matches a set the node does not have fails too, except in check mode, where a
        stand-in of the same dimension takes its place (an ipset task before this one only pretended
        to create it). Without ``unshare`` the rules cannot be validated, and nothing is applied.
        """
        if not wanted:
            return []
        unshare = self.commands.which("unshare")
        if not unshare:
            raise KubeIpvsError("the unshare tool (util-linux) is needed to validate the rules in a scratch network "
                                "namespace before they reach the node; install util-linux. Nothing was applied")
        batch, rules = scratch_batch(table, state, wanted, declared)
        set_lines, warnings = self._scratch_sets(rules, check_mode)
        with tempfile.TemporaryDirectory(dir=self.commands.tmpdir) as scratch_dir:
            sets_file = os.path.join(scratch_dir, "sets")
            rules_file = os.path.join(scratch_dir, "rules")
            with open(sets_file, "w") as handle:
                handle.write("\n".join(set_lines) + "\n")
            with open(rules_file, "w") as handle:
                handle.write(batch)
            rc, out, err = self.commands.run([unshare, "--net", "--", "/bin/sh", "-c", SCRATCH_SCRIPT, "sh",
                                              sets_file, tools.restore, rules_file, tools.save, table])
        if rc != 0:
            raise KubeIpvsError(
                "iptables rejected the rules for {}/{}; nothing was applied: {}".format(
                    table, ", ".join(desired.chain for desired in wanted), err.strip()
                ),
                restore_input=batch.splitlines(),
            )
        take_canonical(parse_save(out, table), wanted)
        return warnings

    def _scratch_sets(self, rules, check_mode):
        """(create lines of the ipsets the rules match on, warnings)."""
        ipsets = Ipsets(self.commands, required=False)
        lines, warnings = [], []
        for name, dimension in set_dimensions(rules).items():
            found = ipsets.type_of(name)
            if found is None:
                if check_mode and ipsets.ipset:
                    warnings.append(
                        f"check mode: ipset {name} does not exist on the node; the rules matching it were "
                        "validated against a stand-in set (a real run fails unless the set is created first)"
                    )
                    lines.append(stand_in_set_line(name, dimension, self.family))
                    continue
                raise KubeIpvsError(
                    f"a rule matches ipset {name}, which does not exist on the node; create it first "
                    "(kubeipvs.node.ipset)"
                )
            set_type, set_family = found
            if set_type.startswith("bitmap:"):
                # A bitmap needs its range to be created; a hash set of the same dimension matches
                # the same flags, which is all iptables checks.
                lines.append(stand_in_set_line(name, len(set_type.split(",")), self.family))
                continue
            lines.append(f"create {name} {set_type}" + (f" family {set_family}" if set_family else ""))
        return lines, warnings

    def roll_back(self, undo):
        """Apply the ``undo`` [(BackendTools, batch)] of tables an aborted call already changed; the
        sentence that says how that went."""
        if not undo:
            return ""
        tables, failures = [], []
        for tools, batch in undo:
            table = batch.split("\n", 1)[0][1:]
            rc, _out, err = self.commands.run([tools.restore, "--noflush", "-w", LOCK_WAIT_SECONDS], data=batch)
            (failures.append(f"{table}: {err.strip()}") if rc != 0 else tables.append(table))
        if failures:
            return ("; the changes to the tables applied before it could not all be rolled back, they are "
                    f"half-changed: {'; '.join(failures)}" + (f" (rolled back: {', '.join(tables)})" if tables else ""))
        return f"; the changes applied before it to {', '.join(tables)} were rolled back, nothing changed"

    def restore(self, tools, batch, what):
        """Apply one ``iptables-restore --noflush`` batch, waiting for the xtables lock; ``what`` starts
        the message when iptables refuses it (the batch is one transaction: nothing of it applied)."""
        rc, _out, err = self.commands.run([tools.restore, "--noflush", "-w", LOCK_WAIT_SECONDS], data=batch)
        if rc != 0:
            raise KubeIpvsError(f"{what}: {err.strip()}", restore_input=batch.splitlines())
