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


START = "Start the watch that holds the foreign IPVS services' connections and undoes a flush"
STOP = "Stop the watch on the node's foreign IPVS services, the sysctl still held"
RESTORE = "Put the foreign IPVS services back"
GIVE_BACK = "Give back the expire_nodest_conn the watch held, and remove its record"
OVER = "The hold is over"


def run_in(variables):
    """The names of keep_foreign.yml's tasks and blocks whose condition holds for ``variables``, in order."""
    return [task["name"] for task in keep_foreign()
            if "when" not in task or evaluate(block_condition(task["name"]), variables)]


@pytest.mark.parametrize(("mode", "modules_seen", "held", "watched"), TABLE)
def test_hold_and_watch_only_where_kube_proxy_s_start_can_remove_foreign_services(mode, modules_seen, held, watched):
    assert (START in run_in(case(mode, modules_seen, "hold"))) is held
    assert (START in run_in(case(mode, modules_seen, "watch"))) is watched


def test_nothing_is_held_twice_nor_without_foreign_services():
    assert run_in(case("nftables", True, "hold", mode_switch_expire_nodest_conn_held=True)) == []
    assert run_in({**case("nftables", True, "hold"), "mode_switch_foreign": []}) == []
    assert run_in({**case("nftables", True, "watch"), "mode_switch_foreign": []}) == []


def test_the_end_phase_ends_the_watch_alone_before_the_foreign_services_are_read():
    """node.yml ends an earlier run's watch first thing, when mode_switch_foreign is not set yet."""
    assert run_in({"mode_switch_keep_phase": "end", "mode_switch_strategy": {}}) == [STOP, GIVE_BACK]


def test_the_restore_stops_the_watch_then_restores_then_gives_the_sysctl_back():
    held = case("nftables", True, "restore", mode_switch_expire_nodest_conn_held=True)
    assert run_in(held) == [STOP, RESTORE, GIVE_BACK, OVER]
    nothing_held = case("iptables", True, "restore", mode_switch_expire_nodest_conn_held=False)
    assert run_in(nothing_held) == [RESTORE, OVER]
