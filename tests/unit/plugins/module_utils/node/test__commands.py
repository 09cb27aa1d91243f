# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one way the node's tools run: the C locale, stderr read, failures named after the tool."""

from __future__ import annotations

import pytest
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError
from ansible_collections.kubeipvs.node.plugins.module_utils.node._commands import Commands


def commands(answer, installed=("ipset",)):
    calls = []

    def run_command(argv, data=None, binary_data=False, environ_update=None):
        calls.append((argv, data, binary_data, environ_update))
        return answer

    return Commands(run_command, lambda name: f"/usr/sbin/{name}" if name in installed else None), calls


def test_a_command_runs_in_the_c_locale_with_its_input_as_given():
    runner, calls = commands((0, "out", ""))
    assert runner.check(["/usr/sbin/ipset", "restore"], data="create A hash:ip\n") == "out"
    (argv, data, binary_data, environ), = calls
    assert (argv, data, binary_data) == (["/usr/sbin/ipset", "restore"], "create A hash:ip\n", True)
    assert environ["LC_ALL"] == "C"


@pytest.mark.parametrize(("answer", "kwargs", "expected"), [
    ((1, "", "ipset v7.17: The set with the given name does not exist\n"), {"absent": "does not exist"}, None),
    ((0, "", "modprobe: WARNING: a note\n"), {"fatal": ("FATAL", "ERROR")}, ""),
])
def test_absent_objects_and_warnings_are_answers(answer, kwargs, expected):
    runner, _calls = commands(answer)
    assert runner.check(["/usr/sbin/ipset", "save", "A"], **kwargs) == expected


@pytest.mark.parametrize(("answer", "kwargs", "message"), [
    ((1, "", "ipset v7.17: Kernel error received: Operation not permitted\n"), {"absent": "does not exist"},
     "^ipset save A failed: ipset v7.17: Kernel error received: Operation not permitted$"),
    ((0, "", "modprobe: FATAL: Module ip_vs_x not found\n"), {"fatal": ("FATAL", "ERROR")},
     "^ipset save A failed: modprobe: FATAL"),
    ((3, "", ""), {}, "^ipset save A failed: exit status 3$"),
    ((2, "", "bad"), {"what": "saving the sets"}, "^saving the sets failed: bad$"),
])
def test_failures_name_the_command_and_carry_the_tools_message(answer, kwargs, message):
    runner, _calls = commands(answer)
    with pytest.raises(KubeIpvsError, match=message) as raised:
        runner.check(["/usr/sbin/ipset", "save", "A"], **kwargs)
    assert raised.value.details["rc"] == answer[0]


def test_a_missing_tool_is_named_with_its_package():
    runner, _calls = commands((0, "", ""), installed=())
    assert runner.which("nft") is None
    with pytest.raises(KubeIpvsError, match=r"^the nft tool is not installed on this node \(.*package: nftables\)$"):
        runner.need("nft", "nftables")
