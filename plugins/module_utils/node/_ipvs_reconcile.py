# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One IPVS run, the same for ipvs_service and ipvs_sync: open the table, read it once, plan against
the drain clocks, apply unless check mode, keep the clocks.

Validated input comes in (pure/_ipvs_input.py), the planner is pure/_ipvs_plan.py, the kernel is
node/_ipvs.py. The drain clocks live in /run (a reboot only restarts them), written through
node/_files.py.
"""

from __future__ import annotations

import contextlib
import json
import time

from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._files import read_text, write_atomic
from ansible_collections.kubeipvs.node.plugins.module_utils.node._ipvs import open_ipvs
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._ipvs_plan import merge_drain_state, plan_changes

DRAIN_STATE_PATH = "/run/kubeipvs/ipvs-drain.json"


def load_drain_state(path=None):
    """{service label: {real server label: unix time draining started}}; missing file = {}."""
    try:
        text = read_text(path or DRAIN_STATE_PATH)
        state = json.loads(text) if text is not None else {}
    except (KubeIpvsError, ValueError):
        return {}  # an unreadable or damaged file only restarts the drain clocks
    return state if isinstance(state, dict) else {}


def save_drain_state(state, path=None):
    """Write the drain state atomically (temp file + rename); /run keeps it until reboot."""
    write_atomic(path or DRAIN_STATE_PATH, json.dumps(state, sort_keys=True))


class Reconciled:
    """What one run found and did: the table it read (``current``), the ``plan`` and its ordered
    ``changes``, and the global timeouts before the run and those it set."""

    def __init__(self, current, plan, timeouts, timeouts_set):
        self.current = current
        self.plan = plan
        self.changes = plan.ordered()
        self.timeouts = timeouts
        self.timeouts_set = timeouts_set

    @property
    def changed(self):
        return bool(self.changes) or bool(self.timeouts_set)


def reconcile(modprobe, desired, absent=(), keys=None, scope=None, exclusive=False, drain_timeout=None,
              timeouts=None, check_mode=False, now=None):
    """Make the IPVS table hold ``desired`` (validated Services), without ``absent`` ones.

    ``keys`` None reads the whole table (services outside ``scope`` are never changed; with
    ``exclusive`` the unlisted ones inside it go); a list of keys reads only those services.
    ``timeouts`` None leaves the global timeouts unread; a dict (maybe empty) reads them and sets
    the ones that differ. Real servers that are no longer listed drain (see plan_changes); their
    clocks are kept per service, and entries of services this run did not look at are kept.
    ``modprobe`` (node/_kmod.Modprobe) loads ip_vs and the schedulers' modules.
    """
    schedulers = {service.scheduler for service in desired}
    with contextlib.closing(open_ipvs(modprobe, check_mode, schedulers)) as kernel:
        if keys is None:
            current = kernel.read(expected={service.key: service for service in desired})
        else:
            current = kernel.read(keys)
        drain_state = load_drain_state()
        plan = plan_changes(desired, current, scope, exclusive=exclusive, absent=[service.key for service in absent],
                            drain_state=drain_state, now=time.time() if now is None else now,
                            drain_timeout=drain_timeout)
        considered = {service.label() for service in current.values() if scope is None or scope.contains(service)}
        considered.update(service.label() for service in (*desired, *absent))
        new_drain_state = merge_drain_state(drain_state, plan, considered)
        before = kernel.get_timeouts() if timeouts is not None else {}
        to_set = {name: value for name, value in (timeouts or {}).items() if before.get(name) != value}
        result = Reconciled(current, plan, before, to_set)
        if not check_mode:
            if result.changes:
                kernel.apply(result.changes)
            if to_set:
                kernel.set_timeouts(to_set)
            if new_drain_state != drain_state:
                save_drain_state(new_drain_state)
    return result
