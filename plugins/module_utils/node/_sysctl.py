# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel parameters under /proc/sys on the node: read, write and read back, and the sysctl.d
files that would override the owned one at boot.

Files are read below a root directory (``/`` on a node, a temporary directory in tests). Keys,
values and the plan are pure/_sysctl.py's.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import (
    apply_file,
    read_text,
    under_root,
    write_existing,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._files import FileChange
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

    def restore(self, key, before):
        """Put back the value ``before`` a write (nothing to do when the kernel refused the write)."""
        if self.read(key) != before:
            self.write(key, before)

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


def apply_writes(sysctl, writes, changes, root="/", move=None, undo=None):
    """Write the planned live values ({key: text}), then the owned files that changed.

    With ``undo`` (node/_undo.Undo) each step first records how to put back what it changes: the
    value the kernel printed before, the file as it was."""
    for key, text in writes.items():
        if undo is not None:
            before = sysctl.read(key)
            if before is not None:
                undo.record(f"sysctl {key}", lambda key=key, before=before: sysctl.restore(key, before))
        sysctl.write(key, text)
    for change in changes:
        if undo is not None:
            undo.record(change.path, lambda change=change: apply_file(
                root, FileChange(change.path, change.after, change.before), move=move))
        apply_file(root, change, move=move)


# Runs inside a network namespace of its own (unshare --net): writes each /proc/sys path given and
# prints, per path, "ok <value read back>" or "errno <number>". Only keys under net. are
# per-namespace, so only those are tried; the node's own values are untouched.
PROBE_SCRIPT = """
import sys
args = sys.argv[1:]
for path, text in zip(args[0::2], args[1::2]):
    try:
        with open(path, "w") as handle:
            handle.write(text + "\\n")
        with open(path) as handle:
            print("ok", " ".join(handle.read().split()))
    except OSError as error:
        print("errno", error.errno)
"""
REFUSED = (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW)


def probe_in_scratch(commands, python, writes):
    """Try the net.* ``writes`` ({key: text}) in a scratch network namespace first: a value the kernel
    refuses (EINVAL, ERANGE) or changes (a clamp) fails here, before the node is touched. Keys the
    scratch namespace cannot show or write (global keys, read-only outside the initial namespace)
    prove nothing and are left to the write itself, which is undone with the rest on a failure."""
    tried = {key: text for key, text in writes.items() if key.replace("/", ".").startswith("net.")}
    unshare = commands.which("unshare")
    if not tried or not unshare or not python:
        return
    argv = [unshare, "--net", "--", python, "-c", PROBE_SCRIPT]
    for key, text in tried.items():
        argv += [proc_path(key), text]
    rc, out, _err = commands.run(argv)
    answers = out.splitlines() if rc == 0 else []
    problems = []
    for (key, text), answer in zip(tried.items(), answers, strict=False):
        verb, _sep, rest = answer.partition(" ")
        if verb == "errno" and rest.isdigit() and int(rest) in REFUSED:
            problems.append(f"sysctl {key} = {text!r}: {os.strerror(int(rest))}")
        elif verb == "ok" and rest != text:
            problems.append(f"sysctl {key} = {text!r}: the kernel keeps {rest!r} instead")
    if problems:
        raise KubeIpvsError("the kernel refuses these values (tried in a scratch network namespace), nothing was "
                            "changed: " + "; ".join(problems), problems=problems)
