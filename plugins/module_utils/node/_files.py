# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Files the collection owns outright, on the node: read one, plan its change, write it atomically.

No Ansible import. ``root`` lets tests point every absolute path into a temporary directory; on a
node it is ``/``.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._files import FileChange


def under_root(root, path):
    """``path`` (absolute, as seen on the node) inside ``root``."""
    if not root or root == "/":
        return path
    return os.path.join(root, path.lstrip("/"))


def read_text(path):
    """Content of ``path``, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KubeIpvsError(f"cannot read {path}: {error.strerror}", path=path) from error
    except UnicodeDecodeError as error:
        raise KubeIpvsError(f"cannot read {path}: it is not UTF-8 text ({error.reason} at byte {error.start})",
                            path=path) from None


def write_existing(path, text):
    """Write one line into a kernel file (/proc/sys, /sys): never create it, as the kernel would not."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def plan_file(root, path, content):
    """The change that makes ``path`` hold exactly ``content`` (None removes the file)."""
    return FileChange(path, read_text(under_root(root, path)), content)


def write_atomic(path, content, mode=0o644, move=None):
    """Write ``content`` to ``path`` through a temporary file in the same directory.

    ``move(src, dest)`` is AnsibleModule.atomic_move on a node (keeps SELinux contexts right);
    without it os.replace is used. A reader never sees a half-written file.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(prefix=".kubeipvs-", dir=directory)
    except OSError as error:
        raise KubeIpvsError(f"cannot write {path}: {error.strerror}", path=path) from error
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        if move is None:
            os.replace(temp_path, path)
        else:
            move(temp_path, path)
    except OSError as error:
        raise KubeIpvsError(f"cannot write {path}: {error.strerror}", path=path) from error
    finally:
        if os.path.exists(temp_path):
            os.unlink(temp_path)


def apply_file(root, change, move=None):
    """Make the file on disk match ``change.after``; nothing happens when it is unchanged."""
    if not change.changed:
        return
    path = under_root(root, change.path)
    if change.after is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise KubeIpvsError(f"cannot remove {change.path}: {error.strerror}", path=change.path) from error
        return
    write_atomic(path, change.after, move=move)
