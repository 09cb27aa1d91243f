# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Owned files: planning, diff and atomic writes under a fake root."""

from __future__ import annotations

import os

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import (
    apply_file,
    plan_file,
    read_text,
    write_existing,
)

PATH = "/etc/sysctl.d/90-x.conf"


@pytest.mark.parametrize(
    ("before", "after", "changed", "diff_before", "diff_after"),
    [
        (None, "a = 1\n", True, "", "a = 1\n"),
        ("a = 1\n", "a = 1\n", False, "a = 1\n", "a = 1\n"),
        ("a = 1\n", "a = 2\n", True, "a = 1\n", "a = 2\n"),
        ("a = 1\n", None, True, "a = 1\n", ""),
        (None, None, False, "", ""),
    ],
)
def test_plan_apply_and_diff(tmp_path, before, after, changed, diff_before, diff_after):
    target = tmp_path / PATH.lstrip("/")
    if before is not None:
        target.parent.mkdir(parents=True)
        target.write_text(before)
    change = plan_file(str(tmp_path), PATH, after)
    assert change.changed is changed
    assert change.diff() == {
        "before_header": PATH,
        "after_header": PATH,
        "before": diff_before,
        "after": diff_after,
    }
    apply_file(str(tmp_path), change)
    assert (target.read_text() if target.exists() else None) == after
    assert plan_file(str(tmp_path), PATH, after).changed is False
    # no temporary file is left behind
    assert not [name for name in os.listdir(tmp_path / "etc/sysctl.d") if name.startswith(".")] if after else True


def test_apply_uses_the_given_move_and_mode(tmp_path):
    moves = []

    def move(src, dest):
        moves.append((os.stat(src).st_mode & 0o777, dest))
        os.replace(src, dest)

    apply_file(str(tmp_path), plan_file(str(tmp_path), PATH, "x\n"), move=move)
    assert moves == [(0o644, str(tmp_path / PATH.lstrip("/")))]


def test_unchanged_file_is_not_rewritten(tmp_path):
    apply_file(str(tmp_path), plan_file(str(tmp_path), PATH, "x\n"))
    target = tmp_path / PATH.lstrip("/")
    os.utime(target, (1, 1))
    apply_file(str(tmp_path), plan_file(str(tmp_path), PATH, "x\n"))
    assert target.stat().st_mtime == 1


def test_unreadable_path_is_a_domain_error(tmp_path):
    (tmp_path / "etc").write_text("a file where a directory should be")
    with pytest.raises(KubeIpvsError, match=r"cannot read .*/etc/sysctl\.d/90-x\.conf: Not a directory"):
        plan_file(str(tmp_path), PATH, "x\n")


def test_failed_move_is_a_domain_error_and_leaves_no_temporary_file(tmp_path):
    def full_disk(src, dest):
        raise OSError(28, "No space left on device")

    with pytest.raises(KubeIpvsError, match=r"cannot write .*/etc/sysctl\.d/90-x\.conf: No space left on device"):
        apply_file(str(tmp_path), plan_file(str(tmp_path), PATH, "x\n"), move=full_disk)
    assert os.listdir(tmp_path / "etc/sysctl.d") == []


def test_write_existing_never_creates(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_existing(str(tmp_path / "nope"), "1")
    (tmp_path / "key").write_text("123456\n")
    write_existing(str(tmp_path / "key"), "7")
    assert (tmp_path / "key").read_text() == "7\n"


def test_a_file_that_is_not_text_is_a_clean_error(tmp_path):
    path = tmp_path / "members"
    path.write_bytes(b"10.0.0.1\n\xff\xfe\x00binary")
    with pytest.raises(KubeIpvsError, match="not UTF-8 text"):
        read_text(str(path))
