# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube-proxy's conntrack sizing."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._conntrack import (
    compute_sizing,
    flow_destinations,
    flows_counted,
)


@pytest.mark.parametrize(
    ("cpus", "kwargs", "expected"),
    [
        # the minimum wins on small nodes
        (1, {}, {"nf_conntrack_max": 131072, "hashsize": 32768, "max_source": "min"}),
        (2, {}, {"nf_conntrack_max": 131072, "hashsize": 32768, "max_source": "min"}),
        # 4 x 32768 == 131072: a tie is the minimum
        (4, {}, {"nf_conntrack_max": 131072, "hashsize": 32768, "max_source": "min"}),
        (5, {}, {"nf_conntrack_max": 163840, "hashsize": 40960, "max_source": "max_per_core"}),
        (64, {}, {"nf_conntrack_max": 2097152, "hashsize": 524288, "max_source": "max_per_core"}),
        (2, {"max_per_core": 100000}, {"nf_conntrack_max": 200000, "hashsize": 50000, "max_source": "max_per_core"}),
        (2, {"minimum": 1000, "max_per_core": 10}, {"nf_conntrack_max": 1000, "hashsize": 250, "max_source": "min"}),
        (2, {"maximum": 1000003}, {"nf_conntrack_max": 1000003, "hashsize": 250000, "max_source": "explicit"}),
        (2, {"hashsize": 4096}, {"nf_conntrack_max": 131072, "hashsize": 4096, "max_source": "min"}),
        (1, {"maximum": 3}, {"nf_conntrack_max": 3, "hashsize": 1, "max_source": "explicit"}),  # never 0
    ],
)
def test_compute_sizing(cpus, kwargs, expected):
    assert compute_sizing(cpus, **kwargs) == dict(expected, cpus=cpus)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maximum": -5}, "max must be a positive integer, got -5"),
        ({"maximum": 0}, "max must be a positive integer, got 0"),
        ({"minimum": 0}, "min must be a positive integer, got 0"),
        ({"max_per_core": -1}, "max_per_core must be a positive integer, got -1"),
        ({"max_per_core": 0}, "max_per_core must be a positive integer, got 0"),
        ({"hashsize": -4}, "hashsize must be a positive integer, got -4"),
        ({"hashsize": True}, "hashsize must be a positive integer, got True"),
        ({"maximum": "5"}, "max must be a positive integer, got '5'"),
    ],
)
def test_compute_sizing_rejects_non_positive(kwargs, message):
    with pytest.raises(KubeIpvsError) as caught:
        compute_sizing(2, **kwargs)
    assert caught.value.msg == message


def test_flow_destinations_group_by_family_and_name_bad_ones():
    assert flow_destinations(["10.96.0.1/12", "fd00:10:96::/112", "10.96.0.0/12"]) == {
        "ipv4": ["10.96.0.0/12"], "ipv6": ["fd00:10:96::/112"]}
    for bad, text in ((["10.96.0.0/33"], "is not a network"), ([], "at least one network"), ([None], "None")):
        with pytest.raises(KubeIpvsError, match=text):
            flow_destinations(bad)


def test_flows_counted_reads_what_conntrack_prints():
    assert flows_counted("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n") == 3
    assert flows_counted("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n") == 0
    assert flows_counted("conntrack v1.4.7 (conntrack-tools): Operation not permitted\n") is None
