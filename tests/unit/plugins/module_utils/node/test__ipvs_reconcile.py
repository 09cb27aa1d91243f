# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One IPVS run: the drain clocks' file."""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs_reconcile import load_drain_state, save_drain_state


def test_drain_state_round_trip(tmp_path):
    path = str(tmp_path / "run/kubeipvs/ipvs-drain.json")
    assert load_drain_state(path) == {}
    save_drain_state({"tcp/10.96.0.1:80": {"10.0.0.2:8080": 12.5}}, path)
    assert load_drain_state(path) == {"tcp/10.96.0.1:80": {"10.0.0.2:8080": 12.5}}
    (tmp_path / "run/kubeipvs/ipvs-drain.json").write_text("{broken")
    assert load_drain_state(path) == {}
