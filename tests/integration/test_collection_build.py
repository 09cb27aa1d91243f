"""The collection builds into a tarball that installs and lists every module with ansible-doc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def isolated_environment(**extra: str) -> dict:
    """This process's environment without anything that exposes the checkout as a collection."""
    hidden = ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS")
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, "ANSIBLE_NOCOLOR": "1", **extra}


def run(*argv: str, env: dict) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("galaxy")
    collections = work / "collections"
    env = isolated_environment(ANSIBLE_COLLECTIONS_PATH=str(collections))
    run(str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work), str(ROOT), env=env)
    tarballs = list(work.glob("kubeipvs-node-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    run(str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(collections), str(tarballs[0]), env=env)
    return env


def test_tarball_leaves_out_development_trees(installed):
    root = Path(installed["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections" / "kubeipvs" / "node"
    assert (root / "MANIFEST.json").exists()
    for development_only in (".venv", ".venv-sanity", ".build", ".lab", ".lab-bench", ".git"):
        assert not (root / development_only).exists(), development_only


def test_ansible_doc_lists_every_module(installed):
    listed = json.loads(run(str(BIN / "ansible-doc"), "-l", "kubeipvs.node", "--json", env=installed))
    expected = {f"kubeipvs.node.{path.stem}" for path in (ROOT / "plugins" / "modules").glob("*.py")}
    assert expected, "the collection ships no modules"
    assert expected == set(listed)
