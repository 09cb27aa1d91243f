# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node's tools, run one way: found with get_bin_path, run in the C locale, stderr read.

Every adapter that runs a tool (ipset, iptables-save/-restore, nft, modprobe, ip, unshare) goes
through ``Commands``: the C locale makes the tools' messages - which the adapters match, such as
"does not exist" - the same on every node, and a failed command becomes a KubeIpvsError carrying
the tool's own message.
"""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


def command_line(argv):
    """How a command is named in a message: the tool's file name and its arguments."""
    return " ".join([os.path.basename(argv[0]), *argv[1:]])


class Commands:
    """``run_command`` and ``get_bin_path`` of an AnsibleModule (or stand-ins with their signatures),
    and ``tmpdir``, a private directory for files a command reads (given as a path, or as a function
    that makes one: the module's own is made only when a command needs it)."""

    def __init__(self, run_command, get_bin_path, tmpdir=None):
        self._run_command = run_command
        self._get_bin_path = get_bin_path
        self._tmpdir = tmpdir

    @classmethod
    def of(cls, module):
        return cls(module.run_command, module.get_bin_path, lambda: module.tmpdir)

    @property
    def tmpdir(self):
        if callable(self._tmpdir):
            self._tmpdir = self._tmpdir()
        return self._tmpdir

    def which(self, name):
        """The tool's path, or None when the node does not have it."""
        return self._get_bin_path(name)

    def need(self, name, package=None):
        """The tool's path; a KubeIpvsError naming the tool (and its package) when it is missing."""
        path = self._get_bin_path(name)
        if not path:
            hint = f" (Debian/Ubuntu/RHEL package: {package})" if package else ""
            raise KubeIpvsError(f"the {name} tool is not installed on this node{hint}")
        return path

    def run(self, argv, data=None):
        """(rc, stdout, stderr) of one command, ``data`` on its standard input."""
        return self._run_command(argv, data=data, binary_data=True, environ_update=C_LOCALE)

    def check(self, argv, data=None, absent=None, fatal=(), what=None):
        """The standard output of a command that must succeed.

        It fails when it exits non-zero, or when its stderr holds one of ``fatal`` (for tools that
        report some errors with status 0). ``absent`` is the stderr text that means "the object
        does not exist": then the answer is None instead of an error.
        """
        rc, out, err = self.run(argv, data)
        err = (err or "").strip()
        if rc == 0 and not any(word in err for word in fatal):
            return out
        if absent is not None and absent in err:
            return None
        raise KubeIpvsError(f"{what or command_line(argv)} failed: {err or f'exit status {rc}'}", rc=rc)
