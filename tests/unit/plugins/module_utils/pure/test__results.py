# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Calls over many objects: every problem at once, and the diff of one object or of many."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._results import (
    fail_on_problems,
    many_diff,
    validate_each,
)


def test_every_problem_is_reported_in_one_failure():
    def validate(item):
        if item < 0:
            raise KubeIpvsError(f"{item} is negative")
        return item * 2

    problems = ["names listed twice: a"]
    assert validate_each([1, -2, 3, -4], validate, lambda index, item: f"items[{index}]", problems) == [2, 6]
    with pytest.raises(KubeIpvsError) as raised:
        fail_on_problems(problems, "items", "nothing was changed")
    assert raised.value.msg == ("3 problem(s) in items; nothing was changed: names listed twice: a | "
                                "items[1]: -2 is negative | items[3]: -4 is negative")
    assert raised.value.details["problems"] == problems
    fail_on_problems([], "items", "nothing was changed")


def test_one_object_shows_as_itself_many_under_headings_with_the_unchanged_counted():
    assert many_diff([("ipset A", "before\n", "after\n")], 1, True, "ipsets", "sets") == {
        "before_header": "ipset A", "after_header": "ipset A", "before": "before\n", "after": "after\n"}
    many = many_diff([("ipset A", "a0\n", "a1\n"), ("ipset C", "", "c1\n")], 5, False, "ipsets", "sets")
    assert many == {"before_header": "ipsets", "after_header": "ipsets",
                    "before": "# ipset A\na0\n# ipset C\n# 3 of 5 sets unchanged\n",
                    "after": "# ipset A\na1\n# ipset C\nc1\n# 3 of 5 sets unchanged\n"}
