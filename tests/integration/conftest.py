# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real-kernel tests on the host: each test gets its own network namespace (its own ipsets and
iptables tables), and the collection's modules run inside it as Ansible runs them: the module
file executed with an ANSIBLE_MODULE_ARGS document, by ``ip netns exec``. The Kubernetes tests
share one real cluster per session (kube_fixtures.py), started by the first test that needs it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The Kubernetes tests' fixtures, here so that every test module shares the session's one cluster.
from kube_fixtures import cluster, kube_cluster  # noqa: F401  # pylint: disable=unused-import

COLLECTION = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = (
    COLLECTION.parents[2] if COLLECTION.parent.name == "kubeipvs" else COLLECTION / ".build" / "collections"
)


def _missing_prerequisite():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "ipset", "iptables-save", "iptables-restore", "nft", "unshare", "conntrack"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


class NetNS:
    """A throw-away network namespace with helpers to run commands and modules inside it."""

    def __init__(self, name, tmp_path):
        self.name = name
        self.tmp_path = tmp_path

    def sh(self, command, check=True, **kwargs):
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, "sh", "-c", command],
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} failed: {result.stderr}")
        return result.stdout

    def popen(self, command, **kwargs):
        return subprocess.Popen(["ip", "netns", "exec", self.name, "sh", "-c", command], **kwargs)

    def module(self, module_name, check_mode=False, diff=False, **args):
        """Run plugins/modules/<module_name>.py inside the namespace; returns its JSON result."""
        args_file = self.tmp_path / f"args-{secrets.token_hex(4)}.json"
        document = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff, _ansible_tmpdir=str(self.tmp_path))
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": document}))
        env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), LC_ALL="C")
        completed = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                sys.executable,
                str(COLLECTION / "plugins" / "modules" / f"{module_name}.py"),
                str(args_file),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        try:
            return json.loads(completed.stdout)
        except ValueError:
            raise AssertionError(
                f"module {module_name} printed no JSON: {completed.stdout}\n{completed.stderr}"
            ) from None


@pytest.fixture
def netns(tmp_path):
    reason = _missing_prerequisite()
    if reason:
        # `make setup` installs every tool and `make test` runs as root: a missing one is a
        # broken set-up, never a test to leave out.
        pytest.fail(f"host-kernel tests cannot run: {reason} (run 'make setup' as root)")
    name = f"kubeipvs-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield NetNS(name, tmp_path)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
