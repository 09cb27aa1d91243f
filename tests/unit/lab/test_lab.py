"""The lab script's own logic: which Debian archive it builds from, the inventory it writes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAB_SCRIPT = Path(__file__).resolve().parents[2] / "lab" / "lab.py"


@pytest.fixture
def lab(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("lab", LAB_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("KUBEIPVS_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBEIPVS_LAB_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("KUBEIPVS_LAB_MIRROR", raising=False)
    return module


@pytest.fixture
def apt_root(lab, monkeypatch, tmp_path):
    """Point the mirror lookup at a fake /etc/apt."""
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    real_path = lab.Path

    def fake_path(*parts):
        text = str(real_path(*parts))
        if text.startswith("/etc/apt"):
            return real_path(str(root) + text[len("/etc/apt"):])
        return real_path(*parts)

    monkeypatch.setattr(lab, "Path", fake_path)
    return root


DEB822_SECURITY_FIRST = """\
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
"""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sources.list.d/debian.sources": DEB822_SECURITY_FIRST}, "http://archive.example/debian"),
        ({"sources.list": "deb http://one-line.example/debian bookworm main contrib\n"}, "http://one-line.example/debian"),
        (
            {"sources.list": "deb [signed-by=/k.gpg] http://signed.example/debian bookworm main\n"},
            "http://signed.example/debian",
        ),
        (
            {
                "sources.list.d/other.list": "deb https://vendor.example/apt stable main\n",
                "sources.list": "# deb http://commented.example/debian bookworm main\n"
                "deb http://real.example/debian bookworm main\n",
            },
            "http://real.example/debian",
        ),
    ],
)
def test_mirror_is_the_bookworm_main_archive_apt_uses(lab, apt_root, files, expected):
    for name, text in files.items():
        (apt_root / name).write_text(text)
    assert lab.debian_mirror() == expected


def test_mirror_override_wins(lab, apt_root, monkeypatch):
    (apt_root / "sources.list").write_text("deb http://real.example/debian bookworm main\n")
    monkeypatch.setenv("KUBEIPVS_LAB_MIRROR", "http://override.example/debian")
    assert lab.debian_mirror() == "http://override.example/debian"


def test_no_bookworm_archive_is_a_clear_error(lab, apt_root):
    (apt_root / "sources.list").write_text("deb http://old.example/debian bullseye main\n")
    with pytest.raises(lab.LabError, match="KUBEIPVS_LAB_MIRROR"):
        lab.debian_mirror()


def test_inventory_lists_every_node_with_its_forwarded_port(lab, monkeypatch):
    monkeypatch.setattr(lab, "ssh_key", lambda: Path("/keys/id_ed25519"))
    nodes = [
        {"name": "node1", "host": "127.0.0.1", "port": 40001},
        {"name": "node2", "host": "127.0.0.1", "port": 40002, "python": lab.MODSERVER_PYTHON},
    ]
    inventory = json.loads(lab.write_inventory(nodes).read_text())
    hosts = inventory["all"]["children"]["lab"]["hosts"]
    assert hosts == {
        "node1": {"ansible_host": "127.0.0.1", "ansible_port": 40001, "ansible_python_interpreter": "/usr/bin/python3"},
        "node2": {
            "ansible_host": "127.0.0.1", "ansible_port": 40002,
            "ansible_python_interpreter": "/usr/local/bin/kubeipvs-lab-python",  # a node with the module server
        },
    }
    assert inventory["all"]["vars"]["ansible_ssh_private_key_file"] == "/keys/id_ed25519"
    assert inventory["all"]["vars"]["ansible_user"] == "root"
    assert not [name for name in inventory["all"]["vars"] if name.startswith("ipvs_node_")], \
        "the lab's inventory sets no role variable: the scenarios do"


def test_a_pid_is_only_ours_when_its_command_line_names_the_node(lab, tmp_path):
    node_dir = tmp_path / "state" / "node1"
    node_dir.mkdir(parents=True)
    # This test process is alive but is not a lab QEMU: it must never be signalled.
    (node_dir / "qemu.pid").write_text(str(__import__("os").getpid()))
    assert lab.qemu_pid(node_dir) is None
    (node_dir / "qemu.pid").write_text("not-a-pid")
    assert lab.qemu_pid(node_dir) is None


def test_image_key_changes_with_the_recipe(lab, monkeypatch, tmp_path):
    recipe = tmp_path / "recipe.sh"
    recipe.write_text("echo one\n")
    key = tmp_path / "key"
    key.with_suffix(".pub").write_text("ssh-ed25519 AAAA lab\n")
    monkeypatch.setattr(lab, "RECIPE", recipe)
    monkeypatch.setattr(lab, "ssh_key", lambda: key)
    first = lab.image_dir()
    recipe.write_text("echo two\n")
    assert lab.image_dir() != first


def test_down_stops_a_vm_left_behind_by_a_killed_run(lab, tmp_path):
    # A run killed after QEMU daemonised leaves only QEMU's own PID file: down must stop it.
    node_dir = tmp_path / "state" / "node1"
    node_dir.mkdir(parents=True)
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "-name", "kubeipvs-lab-node1"]
    )
    try:
        (node_dir / "qemu.pid").write_text(str(stand_in.pid))
        for _attempt in range(500):  # until the child has exec'd and carries the node's name
            if lab.qemu_pid(node_dir):
                break
            time.sleep(0.01)
        assert lab.qemu_pid(node_dir) == stand_in.pid
        lab.down()
        assert stand_in.wait(timeout=15) is not None
        assert not node_dir.exists()
    finally:
        if stand_in.poll() is None:
            stand_in.kill()


def test_prune_keeps_the_target_and_the_newest_other_image(lab):
    images = lab.cache_dir() / "images"
    seconds_old = {"newest-other": 100, "older": 200, "oldest": 300, "current": 500}
    for name, age in seconds_old.items():
        (images / name).mkdir(parents=True)
        stamp = time.time() - age
        os.utime(images / name, (stamp, stamp))
    (images / "building.partial").mkdir()
    lab.prune_images(keep=images / "current")
    assert sorted(path.name for path in images.iterdir()) == ["building.partial", "current", "newest-other"]
