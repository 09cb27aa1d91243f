# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""All or nothing for a call that changes the node in several steps (sysctl, conntrack,
kernel_module): each step records how to undo itself before it runs, and a failure undoes the
steps already taken, newest first, before the error goes up.
"""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError


class Undo:
    """The undo steps of one call, newest last."""

    def __init__(self):
        self.steps = []

    def record(self, what, undo):
        """Before changing ``what`` (a short text): ``undo()`` puts it back."""
        self.steps.append((what, undo))

    def run(self, body):
        """``body()``; when it raises a KubeIpvsError, the recorded steps are undone and the error says
        so (and names any step that could not be undone)."""
        try:
            return body()
        except KubeIpvsError as error:
            error.msg += self.rollback()
            error.args = (error.msg,)
            raise

    def rollback(self):
        """Undo every recorded step, newest first; the sentence to add to the error."""
        if not self.steps:
            return "; nothing had been changed"
        failed = []
        for what, undo in reversed(self.steps):
            try:
                undo()
            except (KubeIpvsError, OSError) as error:
                failed.append(f"{what} ({getattr(error, 'msg', None) or error})")
        undone = ", ".join(what for what, _undo in self.steps)
        self.steps = []
        if failed:
            return f"; undoing this call's changes failed for {'; '.join(failed)} - the node is half-changed"
        return f"; this call's changes were undone ({undone})"
