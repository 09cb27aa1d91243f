# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action half of ``state_src``: ship a state file from the controller to the node, run the module.

A task that gives ``state_src`` names a file on the controller (as
``kubeipvs.node.kube_proxy_state`` writes them with ``dest``; a relative path is looked up like
``ansible.builtin.copy``'s ``src``). The file is copied as it is - compressed - into the task's
temporary directory on the node, the module reads it from there, and the directory goes with the
task: check mode leaves nothing behind either. Without ``state_src`` the module runs as it would
without this plugin, with no temporary directory of its own.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash


class StateSrcAction(ActionBase):
    """Action plugin of a node module that takes some of its options from a ``state_src`` file."""

    _supports_check_mode = True
    _supports_async = True

    def _early_needs_tmp_path(self):
        return self._task.args.get("state_src") is not None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # not used since ansible-core 2.5
        wrap_async = self._task.async_val and not self._connection.has_native_async
        module_args = dict(self._task.args)
        source = module_args.get("state_src")
        if source is not None:
            try:
                if not isinstance(source, str):
                    raise AnsibleError(f"state_src must be a path on the controller, not {type(source).__name__}")
                local = self._find_needle("files", os.path.expanduser(source))
            except AnsibleError as error:
                self._remove_tmp_path(self._connection._shell.tmpdir)
                return merge_hash(result, {"failed": True, "msg": f"state_src {source}: {error.message}"})
            if not self._connection._shell.tmpdir:
                self._make_tmp_path()
            remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "state_src.json.gz")
            self._transfer_file(local, remote)
            self._fixup_perms2((self._connection._shell.tmpdir, remote))
            module_args["state_src"] = remote
        result = merge_hash(result, self._execute_module(module_args=module_args, task_vars=task_vars,
                                                         wrap_async=wrap_async))
        if source is not None:
            # the result names the file the task gave, not the temporary copy that goes with the task
            echoed = result.get("invocation", {}).get("module_args")
            if isinstance(echoed, dict) and "state_src" in echoed:
                echoed["state_src"] = source
            if isinstance(result.get("msg"), str):
                result["msg"] = result["msg"].replace(remote, source)
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
