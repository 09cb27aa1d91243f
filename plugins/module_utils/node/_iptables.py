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

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._family import IPV4, IPV6
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._iptables import TableState, kube_chains, parse_save

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
