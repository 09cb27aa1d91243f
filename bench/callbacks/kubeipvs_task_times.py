# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark callback: the seconds each task took on each host, written as JSON to the file named by
KUBEIPVS_TASK_TIMES when the playbook ends ({host: {task name: seconds}}, a task's loop items and
repeated runs added up). Enabled by bench/switch_bench.py beside the normal output."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kubeipvs_task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.started = {}
        self.seconds = {}

    def v2_runner_on_start(self, host, task):
        self.started[(host.get_name(), task._uuid)] = time.monotonic()

    def _done(self, result):
        key = (result._host.get_name(), result._task._uuid)
        started = self.started.pop(key, None)
        if started is not None:
            per_host = self.seconds.setdefault(key[0], {})
            name = result._task.get_name()
            per_host[name] = round(per_host.get(name, 0.0) + time.monotonic() - started, 2)

    def v2_runner_on_ok(self, result):
        self._done(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result)

    def v2_runner_on_skipped(self, result):
        self._done(result)

    def v2_runner_on_unreachable(self, result):
        self._done(result)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("KUBEIPVS_TASK_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self.seconds, handle, indent=1, sort_keys=True)
