# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module through a real AnsibleModule - its argument_spec validates and fills the options -
with only the system boundary faked: the kernel (tests/unit/fakes) or the node's tools (NodeTools)."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args


def run_main(module, capsys, check_mode=False, **args):
    """main() of ``module`` with ``args``; returns its JSON result (failed ones too)."""
    with patch_module_args(dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)), \
            pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def build(module_file, tools, check_mode=False, diff=True, tmpdir=None, **args):
    """The module's real AnsibleModule (``build_module()``) for ``args``, its commands answered by
    ``tools``; the module's body can then be called with it directly. ``module.commands`` are the
    commands it ran, ``module.warnings`` the warnings it gave."""
    internal = {"_ansible_check_mode": check_mode, "_ansible_diff": diff}
    if tmpdir is not None:
        internal["_ansible_tmpdir"] = str(tmpdir)
    with patch_module_args(dict(args, **internal)):
        module = module_file.build_module()
    module.run_command = tools.run_command
    module.get_bin_path = tools.get_bin_path
    module.commands = tools.commands
    module.warnings = []
    warn = module.warn

    def recording_warn(message):
        module.warnings.append(message)
        warn(message)

    module.warn = recording_warn
    return module


class NodeTools:
    """The tools a node has (``installed``, found under /usr/sbin; None: every tool) and their
    answers (``answer``, for a subclass to give); every command is recorded in ``commands`` as
    ``record`` shapes it."""

    def __init__(self, installed=None):
        self.installed = None if installed is None else set(installed)
        self.commands = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return f"/usr/sbin/{name}" if self.installed is None or name in self.installed else None

    def run_command(self, argv, data=None, binary_data=False, environ_update=None, **_kwargs):
        assert (environ_update or {}).get("LC_ALL") == "C", "tools run in the C locale"
        self.commands.append(self.record(argv, data))
        return self.answer(argv, data)

    def record(self, argv, data):
        return (argv, data)

    def answer(self, argv, data):
        return 0, "", ""
