# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A list whose tail is the same in many nodes' state: kept once, encoded once.

When ``kubeipvs.node.kube_proxy_state`` renders many nodes of one cluster, most of iptables mode's
chains (those of every Service without a Local traffic policy or source ranges) are the same on
every node. A renderer gives them as one ``SharedRun``; each node's list is a ``SharedTail``: its
own items followed by the run's. To everything that reads it, that is a plain list. The state file
writer (``node/_state_files.py``) also sees the run and copies its JSON, compressed once, into every
node's file instead of encoding and compressing it again per node.
"""

from __future__ import annotations


class SharedRun:
    """Items the same for many lists. ``encoded`` is the writer's cache: their gzip member."""

    __slots__ = ("items", "encoded")

    def __init__(self, items):
        self.items = items
        self.encoded = None


class SharedTail(list):
    """``head`` then ``run.items``: a list like any other, which also says where its shared tail starts."""

    def __init__(self, head=(), run=None):
        super().__init__(head)
        self.head = len(self)
        self.run = run if run is not None and run.items else None
        if self.run is not None:
            self.extend(self.run.items)

    def shared(self):
        """The run, if the list still ends in its very items (nothing added, removed or replaced since); else None."""
        run = self.run
        if run is None or len(self) != self.head + len(run.items):
            return None
        return run if all(mine is theirs for mine, theirs in zip(self[self.head:], run.items)) else None
