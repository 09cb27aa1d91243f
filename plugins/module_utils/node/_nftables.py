# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables on the node through the ``nft`` tool: list the tables and delete one (``Nftables``), and
read one table, load a batch into a scratch network namespace and apply it (``TableEditor``).

Only whole tables: kube-proxy's nftables mode keeps everything it makes in its own ``kube-proxy``
table per family. Table names, content checks and the comparable form are pure/_nftables.py's.
"""

from __future__ import annotations

import secrets

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._nftables import TableListing, parse_tables

NOT_FOUND = "No such file or directory"


class Nftables:
    """The node's nftables through the ``nft`` tool, run by ``commands`` (node/_commands.Commands).
    With ``required`` a node without nft is an error at once; without, it simply has no tables."""

    def __init__(self, commands, required=False):
        self.commands = commands
        self.nft = commands.need("nft", "nftables") if required else commands.which("nft")

    def list_tables(self):
        if not self.nft:
            return []  # no nft tool: nothing kube-proxy's nftables mode can have left either
        return parse_tables(self.commands.check([self.nft, "-j", "list", "tables"]))

    def delete_table(self, family, name):
        self.commands.check([self.nft, "delete", "table", family, name], absent=NOT_FOUND)

    def list_map(self, family, table, name):
        """``nft -j list map`` as JSON text, or None when there is no such map."""
        rc, out, _err = self.commands.run([self.nft, "-j", "list", "map", family, table, name])
        return out if rc == 0 else None


# --- one whole table, declaratively (the nftables_table module) ---------------------------------

SCRATCH_SEPARATOR = "@@kubeipvs-nftables-separator@@"
# The exit status of the scratch script when the batch changed the canary tables.
CANARY_TOUCHED = 94
# Runs inside a network namespace of its own (unshare --net), which dies with the shell: makes a
# canary table of a random name in every family the kernel has, loads the batch, and requires the
# canaries to be exactly as they were - content that escaped its table ("flush ruleset", a
# "delete table") shows here even if it slipped past the content check. Then it prints the tables,
# the table as JSON and the table as text.
SCRATCH_SCRIPT = (
    'canary="$1"; nft="$2"; family="$3"; name="$4"; made=""; '
    'for f in ip ip6 inet arp bridge netdev; do '
    'printf "table %s %s {\\n\\tchain c {\\n\\t\\taccept\\n\\t}\\n}\\n" "$f" "$canary" '
    '| "$nft" -f - 2>/dev/null && made="$made $f"; done; '
    '[ -n "$made" ] || exit 95; '
    'canaries() { for f in $made; do "$nft" list table "$f" "$canary" || return 1; done; }; '
    'before="$(canaries)" || exit 95; '
    '"$nft" -f - || exit 90; '
    'after="$(canaries 2>/dev/null)" || exit ' + str(CANARY_TOUCHED) + '; '
    '[ "$before" = "$after" ] || exit ' + str(CANARY_TOUCHED) + '; '
    'for f in $made; do "$nft" delete table "$f" "$canary" || exit ' + str(CANARY_TOUCHED) + '; done; '
    '"$nft" -j list tables || exit 91; echo "' + SCRATCH_SEPARATOR + '"; '
    '"$nft" -j list table "$family" "$name" || exit 92; echo "' + SCRATCH_SEPARATOR + '"; '
    '"$nft" list table "$family" "$name" || exit 93'
)


class TableEditor(Nftables):
    """Nftables plus what a declarative table needs: read one table, load a batch into a scratch
    network namespace, apply a batch."""

    def __init__(self, commands):
        super().__init__(commands, required=True)

    def read_table(self, family, name):
        """The live table, or None when it does not exist."""
        out = self.commands.check([self.nft, "-j", "list", "table", family, name], absent=NOT_FOUND)
        if out is None:
            return None
        return TableListing(out, self.commands.check([self.nft, "list", "table", family, name]))

    def scratch_load(self, batch, family, name):
        """Load ``batch`` into an empty, throw-away network namespace and read the table back as the
        kernel stores it - the canonical form of the desired content, and its validation: nft's
        error comes back before anything on the node changed."""
        unshare = self.commands.which("unshare")
        if not unshare:
            raise KubeIpvsError("the unshare tool (util-linux) is needed to check the content in a scratch "
                                "network namespace; install util-linux")
        canary = f"kubeipvs-canary-{secrets.token_hex(8)}"
        rc, out, err = self.commands.run([unshare, "--net", "--", "sh", "-c", SCRATCH_SCRIPT, "sh", canary, self.nft,
                                          family, name], data=batch)
        if rc == CANARY_TOUCHED:
            raise KubeIpvsError(f"the content of table {family} {name} changed other tables when loaded into a "
                                "scratch network namespace; it must only describe its own table, nothing was "
                                "changed", rc=rc)
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
        rc, _out, err = self.commands.run([self.nft, "-f", "-"], data=batch)
        if rc != 0:
            raise KubeIpvsError(f"nft -f failed, the kernel kept the table as it was: {err.strip()}", rc=rc)
