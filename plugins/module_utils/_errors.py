# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's one domain exception and the boundary that turns it into fail_json."""

from __future__ import annotations

import json
import sys


class KubeIpvsError(Exception):
    """A failure the user can act on: the message says what is wrong and what to fix.

    Keyword arguments become extra keys of the module's failure result (for example the
    kernel version and the path that was searched).
    """

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


def run_module(module, body):
    """Run ``body(module)`` and exit with its result; a KubeIpvsError becomes ``fail_json``."""
    try:
        result = body(module)
    except KubeIpvsError as error:
        module.fail_json(msg=error.msg, **error.details)
    module.exit_json(**result)


def ansible_module(factory, **kwargs):
    """``factory(**kwargs)`` - the module's AnsibleModule - or, when ansible-core's own argument checks
    raise instead of failing (its int conversion raises OverflowError on an infinity and ValueError on
    a NaN), the module's failure result printed and exit, as fail_json would: no traceback."""
    try:
        return factory(**kwargs)
    except (OverflowError, ValueError, ArithmeticError) as error:
        # No AnsibleModule exists to call fail_json on: its result is printed the way fail_json prints it.
        print(json.dumps({"failed": True,  # pylint: disable=ansible-bad-function
                          "msg": f"invalid module arguments: a value cannot be converted ({error}); numbers must "
                                 "be finite"}))
        sys.exit(1)  # pylint: disable=ansible-bad-function
