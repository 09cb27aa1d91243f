# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A call over many objects (sets, chains): every object validated with every problem reported at
once, and one diff shape for every module."""

from __future__ import annotations

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError


def validate_each(items, validate, label, problems):
    """[validate(item)] of the items that pass; the others' errors go to ``problems`` as "label: error"."""
    valid = []
    for index, item in enumerate(items):
        try:
            valid.append(validate(item))
        except KubeIpvsError as error:
            problems.append(f"{label(index, item)}: {error.msg}")
    return valid


def fail_on_problems(problems, noun, outcome):
    """One failure naming every problem (``problems`` lists them), so a task is fixed in one round."""
    if problems:
        raise KubeIpvsError(f"{len(problems)} problem(s) in {noun}; {outcome}: {' | '.join(problems)}",
                            problems=problems)


def many_diff(described, total, single, header, noun):
    """Ansible's diff of a call over ``total`` objects.

    ``described`` is [(label, before, after)] of the objects to show. The single-object form of a
    module shows its one object as itself; the many-object form shows the changed objects, each
    under a ``# label`` heading, and how many ``noun`` were unchanged, so the diff stays readable
    when most of a hundred objects did not move.
    """
    if single:
        label, before, after = described[0]
        return {"before_header": label, "after_header": label, "before": before, "after": after}
    unchanged = f"# {total - len(described)} of {total} {noun} unchanged\n"
    return {
        "before_header": header,
        "after_header": header,
        "before": "".join(f"# {label}\n{before}" for label, before, _after in described) + unchanged,
        "after": "".join(f"# {label}\n{after}" for label, _before, after in described) + unchanged,
    }
