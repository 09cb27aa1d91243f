"""The pod runner's pure parts: what it execs, with which environment, and how it lays out volumes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "lab" / "podrunner.py"
spec = importlib.util.spec_from_file_location("podrunner", RUNNER)
podrunner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(podrunner)

POD = {
    "metadata": {"name": "kube-proxy-abcde", "namespace": "kube-system", "uid": "u-1",
                 "labels": {"k8s-app": "kube-proxy"}},
    "spec": {"nodeName": "node2", "serviceAccountName": "kube-proxy"},
}


@pytest.mark.parametrize(("text", "expected"), [
    ("--hostname-override=$(NODE_NAME)", "--hostname-override=node2"),
    ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),
    ("$$(NODE_NAME) is escaped", "$(NODE_NAME) is escaped"),
    ("$(NODE_NAME)$(NODE_NAME)", "node2node2"),
    ("plain $ sign", "plain $ sign"),
])
def test_expand_follows_kubernetes_rules(text, expected):
    assert podrunner.expand(text, {"NODE_NAME": "node2"}) == expected


def test_container_env_and_argv_as_the_kubelet_builds_them():
    container = {
        "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf"],
        "args": ["--hostname-override=$(NODE_NAME)", "--v=$(LEVEL)"],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['k8s-app']"}}},
            {"name": "LEVEL", "value": "2"},
            {"name": "WHERE", "value": "$(NODE_NAME)/$(APP)"},
        ],
    }
    env = podrunner.container_env(POD, container, ["192.168.200.2"], {"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert env["NODE_NAME"] == "node2"
    assert env["WHERE"] == "node2/kube-proxy"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["PATH"] == podrunner.CONTAINER_PATH
    assert podrunner.container_argv(container, env) == [
        "/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=node2",
        "--v=2"]


def test_unsupported_env_sources_and_missing_commands_are_refused():
    with pytest.raises(ValueError, match="only value and fieldRef"):
        podrunner.container_env(POD, {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {}}}]}, [], {})
    with pytest.raises(ValueError, match=r"fieldRef spec\.unknown"):
        podrunner.field_value(POD, "spec.unknown", [])
    with pytest.raises(ValueError, match="no command"):
        podrunner.container_argv({"image": "x"}, {})


def test_backoff_doubles_from_ten_seconds_to_five_minutes():
    assert [podrunner.backoff(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [10, 20, 40, 80, 160, 300, 300]


def test_atomic_write_swaps_the_data_link_and_keeps_key_links(tmp_path):
    volume = tmp_path / "volume"
    assert podrunner.atomic_write(str(volume), {"config.conf": b"mode: ipvs\n", "kubeconfig.conf": b"a"})
    first = os.readlink(volume / "..data")
    inode = (volume / "config.conf").stat().st_ino
    assert os.readlink(volume / "config.conf") == "..data/config.conf"
    assert (volume / "config.conf").read_bytes() == b"mode: ipvs\n"
    assert not podrunner.atomic_write(str(volume), {"config.conf": b"mode: ipvs\n", "kubeconfig.conf": b"a"})
    assert podrunner.atomic_write(str(volume), {"config.conf": b"mode: nftables\n"})
    assert os.readlink(volume / "..data") != first
    assert (volume / "config.conf").read_bytes() == b"mode: nftables\n"
    # the file a reader opened before the swap is another inode: a watcher of it sees a removal, not a write
    assert (volume / "config.conf").stat().st_ino != inode
    assert not (volume / "kubeconfig.conf").exists()
    assert not (volume / first).exists()
    assert sorted(p.name for p in volume.iterdir() if not p.name.startswith("..")) == ["config.conf"]


def test_container_command_binds_into_an_overlay_root_then_execs_the_command():
    argv = podrunner.in_container(
        [("/var/lib/podrunner/images/x/rootfs/usr/local/bin", "/usr/local/bin", True),
         ("/var/lib/podrunner/pods/u/volumes/kube proxy", "/var/lib/kube-proxy", False)],
        ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf"], "/scratch/c-1")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = argv[7].split("; ")
    assert script[0] == "set -e"
    assert "mount -t overlay container -o lowerdir=/,upperdir=/scratch/c-1/upper,workdir=/scratch/c-1/work " \
           "/scratch/c-1/root" in script
    assert "mount --rbind /proc /scratch/c-1/root/proc" in script
    assert "mount -t tmpfs tmpfs /scratch/c-1/root/run" in script
    modules = "/scratch/c-1/root" + os.path.realpath("/lib/modules")
    hidden = script.index(f"[ ! -d {modules} ] || mount -t tmpfs -o mode=0755 modules {modules}")
    assert hidden < min(i for i, step in enumerate(script) if step.startswith("mount --rbind /var/lib/podrunner"))
    image = script.index("mount --rbind /var/lib/podrunner/images/x/rootfs/usr/local/bin "
                         "/scratch/c-1/root/usr/local/bin")
    assert script[image + 1] == "mount -o remount,bind,ro /scratch/c-1/root/usr/local/bin"
    volume = script.index("mount --rbind '/var/lib/podrunner/pods/u/volumes/kube proxy' "
                          "/scratch/c-1/root/var/lib/kube-proxy")
    assert "remount" not in script[volume + 1]
    assert script[-1] == 'exec chroot /scratch/c-1/root  "$@"'
    assert argv[8:] == ["container", "/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf"]


def test_a_node_in_a_network_namespace_runs_its_containers_there():
    argv = podrunner.in_container([], ["/bin/true"], "/s", netns="kipt-node1", workdir="/data")
    assert argv[:4] == ["ip", "netns", "exec", "kipt-node1"]
    assert argv[11].endswith('exec chroot /s/root /usr/bin/env --chdir=/data "$@"')


def test_pod_conditions_keep_their_transition_times():
    since = {}
    scheduled = {"type": "PodScheduled", "status": "True"}
    first = podrunner.pod_conditions(scheduled, True, ["kube-proxy"], since)
    assert [(c["type"], c["status"]) for c in first] == [
        ("PodScheduled", "True"), ("PodReadyToStartContainers", "True"), ("Initialized", "True"),
        ("ContainersReady", "False"), ("Ready", "False")]
    ready_before = since["Ready"]
    assert first[-1]["message"] == "containers with unready status: [kube-proxy]"
    again = podrunner.pod_conditions(scheduled, True, ["kube-proxy"], since)
    assert since["Ready"] == ready_before and again == first
    podrunner.pod_conditions(scheduled, True, [], since)
    assert since["Ready"][0] == "True"
