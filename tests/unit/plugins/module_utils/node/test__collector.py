# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The paused cyclic collector, and the modules that run over a large state with it paused."""

from __future__ import annotations

import gc

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils.node._collector import collector_paused
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.modules import kube_proxy_state


def test_collector_paused_turns_the_collector_back_on_even_after_an_error():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KubeIpvsError), collector_paused():
        raise KubeIpvsError("failed mid-run")
    assert gc.isenabled()


def test_collector_paused_leaves_a_collector_that_was_off_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_kube_proxy_state_computes_with_the_collector_paused(monkeypatch):
    seen = []

    def compute(module):
        seen.append((module, gc.isenabled()))
        return {"changed": False}

    monkeypatch.setattr(kube_proxy_state, "compute", compute)
    assert kube_proxy_state.compute_paused("module") == {"changed": False}
    assert seen == [("module", False)]
    assert gc.isenabled()
