# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection tracking on the node: how many CPUs kube-proxy would count, whether the hash table
size can be changed live from here, and the flows of the table (the conntrack tool)."""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import command_line
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import under_root
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._conntrack import HASHSIZE_PATH, flows_counted


def cpu_count():
    """CPUs this process may run on, as Go's runtime.NumCPU (what kube-proxy uses) counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hashsize_blocker(root="/"):
    """Why the hash size cannot be changed live here, or None.

    The kernel only lets the initial network namespace write it (EOPNOTSUPP elsewhere), and a
    container usually sees /sys read-only.
    """
    try:
        own = os.readlink(under_root(root, "/proc/self/ns/net"))
        initial = os.readlink(under_root(root, "/proc/1/ns/net"))
    except OSError:
        own = initial = None  # cannot tell (no permission on pid 1): let the write decide
    if own != initial:
        return (
            f"this process runs in network namespace {own}, not the initial one ({initial}); the kernel only"
            f" accepts {HASHSIZE_PATH} from the initial network namespace: run on the host"
        )
    path = under_root(root, HASHSIZE_PATH)
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"{HASHSIZE_PATH} is on a read-only file system (a container's /sys?): run on the host"
    return None


class ConntrackFlows:
    """The connection tracking table through the conntrack tool: count or delete the flows of one
    protocol whose original destination lies in a network."""

    def __init__(self, commands):
        self.commands = commands
        self.tool = commands.need("conntrack", package="conntrack")

    def _run(self, action, protocol, family, network):
        argv = [self.tool, action, "-f", family, "-p", protocol, "--orig-dst", network]
        rc, _out, err = self.commands.run(argv)
        err = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
        count = flows_counted(err)
        # conntrack exits 1 when nothing matched; anything else without a count is a failure
        if count is None or (rc != 0 and count != 0):
            raise KubeIpvsError(f"{command_line(argv)} failed: {err.strip() or f'exit status {rc}'}", rc=rc)
        return count

    def count(self, protocol, family, network):
        return self._run("-L", protocol, family, network)

    def delete(self, protocol, family, network):
        return self._run("-D", protocol, family, network)
