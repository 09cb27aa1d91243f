# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writing state files: a shared tail is copied as compressed once, and the file reads back as the
same JSON as one written whole."""

from __future__ import annotations

import gzip
import json

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.node._state_files import (
    read_state_file,
    state_bytes,
    write_state_file,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._shared_run import SharedRun, SharedTail


def whole(options):
    return json.loads(gzip.decompress(state_bytes(options)))


RUN_ITEMS = [{"chain": f"KUBE-SVC-{n}", "rules": [f"-j KUBE-SEP-{n}"]} for n in range(50)]


@pytest.mark.parametrize("head", [[], [{"chain": "KUBE-SERVICES", "rules": ["-j KUBE-SVC-1"]}], [1, "two", None]])
@pytest.mark.parametrize("before, after", [({}, {}), ({"family": "ipv4"}, {}), ({}, {"check": True}),
                                           ({"a": [1]}, {"b": {"c": "d"}})])
def test_a_shared_tail_reads_back_as_the_plain_list(tmp_path, head, before, after):
    run = SharedRun(RUN_ITEMS)
    value = SharedTail(head, run)
    assert value == head + RUN_ITEMS and value.shared() is run
    options = {**before, "chains": value, **after}
    assert whole(options) == {**before, "chains": head + RUN_ITEMS, **after}
    path = write_state_file(tmp_path, "state.json.gz", options)
    assert read_state_file(path) == json.loads(json.dumps(options))
    member = run.encoded
    assert gzip.decompress(member).decode() == json.dumps(RUN_ITEMS, separators=(",", ":"))[1:-1]
    # the next file copies the member compressed the first time
    assert member in state_bytes({"chains": SharedTail([{"other": "node"}], run)})
    assert run.encoded is member


def test_a_tail_that_is_no_longer_the_run_is_written_as_it_is():
    run = SharedRun(RUN_ITEMS)
    for change in (lambda v: v.append({"added": 1}), lambda v: v.pop(), lambda v: v.__setitem__(-1, {"x": 1}),
                   lambda v: v.insert(0, {"first": 1})):
        value = SharedTail([{"head": 1}], run)
        change(value)
        assert value.shared() is None
        assert whole({"chains": value}) == {"chains": list(value)}
    assert run.encoded is None  # nothing was shared


def test_an_empty_run_or_none_is_a_plain_list():
    assert SharedTail([1, 2], SharedRun([])).shared() is None
    assert SharedTail([1, 2]).shared() is None and SharedTail([1, 2]) == [1, 2]
    assert whole({"chains": SharedTail([], SharedRun([]))}) == {"chains": []}
    assert whole({}) == {}
