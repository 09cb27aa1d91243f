# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node's ipsets through the ipset tool: read sets, the set types the tool knows, the iptables
rules that still use a set, and one ``ipset restore`` batch.

Entries, headers, plans and batches are pure/_ipset.py's; this file only runs the tools (through
node/_commands.py) and turns their answers into plain data or a KubeIpvsError that says what to do.
"""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipset import (
    failed_line,
    parse_kernel_types,
    parse_references,
    parse_save,
    parse_save_all,
    referencing_rules,
    temporary_set_name,
    undo_lines,
)

NOT_FOUND = "does not exist"
IN_USE = "in use by a kernel component"
# Every iptables backend and family a rule matching a set can live in.
SAVE_TOOLS = (
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-save",
    "ip6tables-save",
)


class Ipsets:
    """``commands`` is a node/_commands.Commands. With ``required`` a node without the ipset tool
    is an error at once; without, it simply has no sets."""

    def __init__(self, commands, required=True):
        self.commands = commands
        self.ipset = commands.need("ipset", "ipset") if required else commands.which("ipset")

    def read(self, names):
        """{name: (header or None, members)}: ``ipset save NAME`` for one set, one ``ipset save`` for many."""
        if len(names) == 1:
            name = names[0]
            out = self.commands.check([self.ipset, "save", name], absent=NOT_FOUND)
            return {name: (None, set()) if out is None else parse_save(out, name)}
        return parse_save_all(self.commands.check([self.ipset, "save"]), names)

    def names(self):
        """Every set's name (none when the node has no ipset tool)."""
        if not self.ipset:
            return []
        return self.commands.check([self.ipset, "list", "-n"]).split()

    def type_of(self, name):
        """(type, family or None) of an existing set, or None."""
        if not self.ipset:
            return None
        out = self.commands.check([self.ipset, "list", "-t", name], absent=NOT_FOUND)
        if out is None:
            return None
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        header = fields.get("Header", "").split()
        return fields.get("Type", ""), header[header.index("family") + 1] if "family" in header else None

    def check_types(self, set_types):
        """Fail, naming what the node's tool knows, when it does not know one of ``set_types``."""
        if not set_types:
            return
        _rc, out, _err = self.commands.run([self.ipset, "help"])
        known = parse_kernel_types(out)
        unknown = sorted(set_type for set_type in set_types if known and set_type not in known)
        if unknown:
            raise KubeIpvsError(
                "set type {} is not supported by the ipset tool on this node (it knows: {})".format(
                    ", ".join(unknown), ", ".join(sorted(known))
                )
            )

    def references(self, names):
        """{name: rules} for the sets that rules in any iptables backend and family match by name."""
        found = {}
        for tool in SAVE_TOOLS:
            path = self.commands.which(tool)
            if not path:
                continue
            rc, out, _err = self.commands.run([path])
            if rc == 0:
                for name in names:
                    rules = [f"{tool} {rule}" for rule in referencing_rules(out, name)]
                    if rules:
                        found.setdefault(name, []).extend(rules)
        return found

    def refuse_if_referenced(self, actions):
        """Fail, changing nothing, when iptables still uses a set that would be destroyed.

        ``actions`` maps set names to what would be done to them ("destroy", "re-create ...").
        """
        references = self.references(list(actions)) if actions else {}
        if not references:
            return
        problems = [
            f"cannot {actions[name]} set {name}: iptables rules still reference it; remove them first: "
            + "; ".join(rules)
            for name, rules in references.items()
        ]
        raise KubeIpvsError(
            " | ".join(problems), referencing_rules=[rule for rules in references.values() for rule in rules]
        )

    def refuse_if_in_use(self, actions):
        """Fail, changing nothing, when the kernel counts references to a set that would be destroyed or
        renamed aside (a rule in another backend, a list:set set): ipset would refuse it half-way."""
        if not actions:
            return
        references = parse_references(self.commands.check([self.ipset, "list", "-t"]))
        held = {name: references[name] for name in actions if references.get(name)}
        if held:
            raise KubeIpvsError(" | ".join(
                f"cannot {actions[name]} set {name}: the kernel counts {count} reference(s) to it (an iptables "
                "rule in another backend or family, or a list:set set); nothing was changed"
                for name, count in held.items()), references=held)

    def probe_headers(self, lines):
        """Create the sets of ``lines`` (``create`` lines) in a scratch network namespace first, so the
        kernel's refusal of a type or its options (an unknown type, a hash size it cannot allocate)
        comes back before the node is touched. Skipped without ``unshare``: the batch itself still
        builds every new set before anything existing changes, and is rolled back on a refusal."""
        unshare = self.commands.which("unshare")
        if not lines or not unshare:
            return
        rc, _out, err = self.commands.run([unshare, "--net", "--", self.ipset, "restore"],
                                          data="".join(line + "\n" for line in lines))
        if rc != 0:
            raise KubeIpvsError(f"the kernel refused a set's type or options (tried in a scratch network namespace), "
                                f"nothing was changed: {err.strip()}", rc=rc)

    def restore(self, batch, swapped=()):
        """Apply a pure/_ipset.Batch with one ``ipset restore -exist``; returns warnings.

        If the kernel refuses a line, what the batch applied before it is undone (pure/_ipset.undo_lines)
        and the error names the set the line belongs to. A refused clean-up line (a scratch set that
        cannot be destroyed) leaves the change in place and becomes a warning.
        """
        text = batch.text
        rc, _out, err = self.commands.run([self.ipset, "restore", "-exist"], data=text)
        if rc == 0:
            return []
        message = err.strip()
        if IN_USE in message:
            message += (
                " (a kernel component such as an iptables rule in another backend, a list:set set or "
                "another network namespace's rule still holds the set)"
            )
        line = failed_line(message)
        located = batch.locate(line) if line else None
        if located is not None and located[1] == "cleanup":
            return [f"the sets were changed, but a scratch set of {located[0]} could not be removed: {message}"]
        if located is None:
            # Without the line ipset stopped at, what it applied is unknown: only scratch sets go.
            for name in swapped:
                self.commands.run([self.ipset, "destroy", temporary_set_name(name)])
            if len(batch.chunks) == 1:
                located = (batch.chunks[0][0], batch.chunks[0][1], [])
            else:
                raise KubeIpvsError(f"ipset restore failed: {message}", rc=rc, batch_head=text.splitlines()[:5])
            undone = ""
        else:
            undone = self.undo(batch.applied(line))
        name, method, applied = located
        if applied:
            message += "; the changes to {} (before it in the batch) were applied".format(", ".join(applied))
        raise KubeIpvsError(
            f"ipset restore for set {name} failed ({method}): {message}{undone}", rc=rc,
            batch_head=text.splitlines()[:5]
        )

    def undo(self, applied):
        """Roll back the ``applied`` restore lines; the sentence that says how that went."""
        lines, lost = undo_lines(applied)
        if not lines and not lost:
            return "; nothing had changed"
        gone = f"; set(s) {', '.join(lost)} were destroyed and cannot come back" if lost else ""
        rc, _out, err = self.commands.run([self.ipset, "restore", "-exist"],
                                          data="".join(line + "\n" for line in lines))
        if rc != 0:
            return f"; rolling them back failed too, the sets are half-changed: {err.strip()}{gone}"
        return f"; they were rolled back{gone}" if lost else "; they were rolled back, nothing changed"

    def destroy(self, name):
        """Destroy a set; one that is already gone is fine."""
        self.commands.check([self.ipset, "destroy", name], absent=NOT_FOUND,
                            what=f"ipset destroy {name}")
