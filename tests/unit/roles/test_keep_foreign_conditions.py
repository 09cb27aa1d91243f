# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""When the mode_switch role holds the foreign IPVS services' connections over a kube-proxy restart,
and when a rollback leaves a watch behind: the conditions as the role's files write them
(vars/main.yml, tasks/keep_foreign.yml), evaluated with ansible-core's filters, for every mode
kube-proxy can start in and both answers to whether its pods see the node's kernel modules."""

from __future__ import annotations

import pathlib

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule

ROLE = pathlib.Path(__file__).resolve().parents[3] / "roles" / "mode_switch"
UNDEFINED = object()


class AnsibleUndefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """As ansible-core's: `a.b.c | default(x)` works, anything else done with an undefined variable fails."""


def environment():
    env = jinja2.Environment(undefined=AnsibleUndefined)
    # ansible-core's own filters (bool); Jinja's builtins stay: ansible-core's versions of those need its templar
    env.filters.update({name: f for name, f in FilterModule().filters().items() if name not in env.filters})
    return env


def role_vars():
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())


def keep_foreign():
    return yaml.safe_load((ROLE / "tasks" / "keep_foreign.yml").read_text())


def block_condition(name):
    (block,) = [task for task in keep_foreign() if task["name"] == name]
    return block["when"] if isinstance(block["when"], list) else [block["when"]]


def evaluate(conditions, variables):
    """True when every condition of a `when` list holds - the role's own vars templated first."""
    env = environment()
    variables = {name: value for name, value in variables.items() if value is not UNDEFINED}
    for name in ("mode_switch_start_flushes_ipvs",):
        variables[name] = env.from_string(role_vars()[name]).render(**variables).strip()
    return all(env.compile_expression(condition)(**variables) for condition in conditions)


def case(mode, modules_seen, phase, **more):
    strategy = {"node_kernel_modules": {"after": modules_seen}} if modules_seen is not UNDEFINED else {}
    return {"mode_switch_keep_mode": mode, "mode_switch_strategy": strategy, "mode_switch_keep_phase": phase,
            "mode_switch_foreign": [{"address": "192.0.2.50", "port": 80, "protocol": "tcp"}], **more}


# (mode kube-proxy starts in, its pods see the node's modules, a hold, a watch after a failed rollback)
TABLE = [
    ("nftables", True, True, True),        # platformCleanup flushes the whole IPVS table
    ("nftables", False, False, False),     # its cleanup cannot reach IPVS without the modules
    ("nftables", UNDEFINED, True, True),   # not known whether the pods see them: as if they do
    ("ipvs", True, True, False),           # deletes what excludeCIDRs misses; the role fills it
    ("ipvs", False, True, False),
    ("iptables", True, False, False),      # never touches IPVS
    ("iptables", False, False, False),
    ("", True, True, True),                # a mode not known
    (UNDEFINED, UNDEFINED, True, True),
]


@pytest.mark.parametrize(("mode", "modules_seen", "held", "watched"), TABLE)
def test_hold_and_watch_only_where_kube_proxy_s_start_can_remove_foreign_services(mode, modules_seen, held, watched):
    hold = block_condition("Hold the open connections of foreign IPVS services")
    watch = block_condition("Leave a watch for kube-proxy's later start, which flushes the foreign IPVS services")
    assert evaluate(hold, case(mode, modules_seen, "hold")) is held
    assert evaluate(watch, case(mode, modules_seen, "watch")) is watched
    # the hold's own watch follows the hold, whatever the mode
    assert evaluate(watch, case(mode, modules_seen, "hold", mode_switch_hold_began=held)) is held


def test_nothing_is_held_twice_nor_without_foreign_services():
    hold = block_condition("Hold the open connections of foreign IPVS services")
    assert not evaluate(hold, case("nftables", True, "hold", mode_switch_expire_nodest_conn_held=True))
    assert not evaluate(hold, {**case("nftables", True, "hold"), "mode_switch_foreign": []})
    assert not evaluate(hold, case("nftables", True, "restore"))


def test_the_end_phase_ends_the_watch_alone_before_the_foreign_services_are_read():
    """node.yml ends an earlier run's watch first thing, when mode_switch_foreign is not set yet."""
    first_thing = {"mode_switch_keep_phase": "end", "mode_switch_strategy": {}}
    run = [task["name"] for task in keep_foreign() if evaluate(block_condition(task["name"]), first_thing)]
    assert run == ["End the watch on the node's foreign IPVS services"]


def test_the_restore_ends_the_hold_s_watch_first():
    restore = case("nftables", True, "restore", mode_switch_expire_nodest_conn_held=True)
    run = [task["name"] for task in keep_foreign() if evaluate(block_condition(task["name"]), restore)]
    assert run == ["End the watch on the node's foreign IPVS services", "Put the foreign IPVS services back"]
    nothing_held = case("iptables", True, "restore", mode_switch_expire_nodest_conn_held=False)
    run = [task["name"] for task in keep_foreign() if evaluate(block_condition(task["name"]), nothing_held)]
    assert run == ["Put the foreign IPVS services back"]
