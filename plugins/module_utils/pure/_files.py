# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Files the collection owns outright: their header, and one file's change as Ansible shows it in a diff.

Reading and writing them is node/_files.py's job.
"""

from __future__ import annotations

OWNED_HEADER = "# Managed by kubeipvs.node ({owner}). Do not edit: changes are overwritten.\n"


class FileChange:
    """One owned file going from ``before`` to ``after`` (None = absent)."""

    def __init__(self, path, before, after):
        self.path = path
        self.before = before
        self.after = after

    @property
    def changed(self):
        return self.before != self.after

    def diff(self):
        """Ansible's diff dict; an absent file shows as empty text."""
        return {
            "before_header": self.path,
            "after_header": self.path,
            "before": self.before or "",
            "after": self.after or "",
        }
