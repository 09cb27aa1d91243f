# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The CPU count and the hash size checks against the running process's namespaces."""

from __future__ import annotations

import os

from ansible_collections.kubeipvs.node.plugins.module_utils.node._conntrack import cpu_count, hashsize_blocker


def test_cpu_count_is_the_affinity_set():
    assert cpu_count() == len(os.sched_getaffinity(0))


def make_netns(root, own, initial):
    for pid, target in (("self", own), ("1", initial)):
        directory = root / "proc" / pid / "ns"
        directory.mkdir(parents=True)
        (directory / "net").symlink_to(target)
    (root / "sys/module/nf_conntrack/parameters").mkdir(parents=True)
    (root / "sys/module/nf_conntrack/parameters/hashsize").write_text("65536\n")


def test_hashsize_blocker_in_the_initial_namespace(tmp_path):
    make_netns(tmp_path, "net:[4026531840]", "net:[4026531840]")
    assert hashsize_blocker(str(tmp_path)) is None


def test_hashsize_blocker_on_read_only_sysfs(tmp_path, monkeypatch):
    make_netns(tmp_path, "net:[4026531840]", "net:[4026531840]")
    real_statvfs = os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly if "/sys/" in str(path) else real_statvfs(path))
    assert "is on a read-only file system" in hashsize_blocker(str(tmp_path))


def test_hashsize_blocker_in_another_namespace(tmp_path):
    make_netns(tmp_path, "net:[4026532999]", "net:[4026531840]")
    message = hashsize_blocker(str(tmp_path))
    assert "network namespace net:[4026532999], not the initial one (net:[4026531840])" in message
    assert "run on the host" in message
