# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel parameters under /proc/sys on the node: read, write and read back, and the sysctl.d
files that would override the owned one at boot.

Files are read below a root directory (``/`` on a node, a temporary directory in tests). Keys,
values and the plan are pure/_sysctl.py's.
"""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import (
    apply_file,
    read_text,
    under_root,
    write_existing,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._sysctl import kernel_text, parse_dropin, proc_path

# systemd-sysctl's search path; a file name in an earlier directory hides the same name later.
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")


class Sysctl:
    """/proc/sys under ``root``."""

    def __init__(self, root="/"):
        self.root = root

    def read(self, key):
        """The value as the kernel prints it (fields joined by one space), None if the key is absent."""
        path = under_root(self.root, proc_path(key))
        try:
            with open(path, encoding="utf-8") as handle:
                return kernel_text(handle.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError as error:
            raise KubeIpvsError(f"sysctl {key} is a directory of keys, not a key", key=key) from error
        except OSError as error:
            raise KubeIpvsError(f"cannot read sysctl {key}: {error.strerror}", key=key) from error

    def write(self, key, text):
        """Write and read back: the kernel may reject (EINVAL) or silently clamp a value."""
        path = under_root(self.root, proc_path(key))
        try:
            write_existing(path, text)
        except OSError as error:
            hint = " (read-only /proc/sys, or a key that is read-only in this network namespace?)"
            raise KubeIpvsError(
                f"cannot set sysctl {key} to {text!r}: {error.strerror}" + (hint if error.errno in (1, 13, 30) else ""),
                key=key,
            ) from error
        now = self.read(key)
        if now != text:
            raise KubeIpvsError(f"sysctl {key}: wrote {text!r} but the kernel now prints {now!r}", key=key)

    def shadowing(self, own_file, values):
        """Warnings for later sysctl.d files that set one of ``values`` differently at boot."""
        own_name = os.path.basename(own_file)
        files = {}
        for directory in SYSCTL_DIRS:
            try:
                names = os.listdir(under_root(self.root, directory))
            except OSError:
                continue
            for name in names:
                if name.endswith(".conf") and name not in files:
                    files[name] = f"{directory}/{name}"
        warnings = []
        for name in sorted(files):
            if name <= own_name or files[name] == own_file:
                continue
            later = parse_dropin(read_text(under_root(self.root, files[name])))
            for key, text in values.items():
                other = later.get(key.replace("/", "."))
                if other is not None and other != text:
                    warnings.append(f"{files[name]} sets {key} = {other} after {own_file}: at boot {other} wins")
        return warnings


def apply_writes(sysctl, writes, changes, root="/", move=None):
    """Write the planned live values ({key: text}), then the owned files that changed."""
    for key, text in writes.items():
        sysctl.write(key, text)
    for change in changes:
        apply_file(root, change, move=move)
