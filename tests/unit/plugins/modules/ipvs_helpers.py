# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module's main() with the kernel boundary replaced by the in-memory fakes."""

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
