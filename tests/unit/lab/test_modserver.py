"""The lab nodes' module server (tests/lab/modserver.py and its client, modclient/), run on this host
exactly as lab.py installs it on a node: a program handed to the client runs as /usr/bin/python3
would run it, and Ansible's modules give the same results through it as through the plain
interpreter."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
LAB_SCRIPT = HERE.parents[2] / "lab" / "lab.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or not shutil.which("go") or not ANSIBLE_PLAYBOOK.exists(),
    reason="needs /usr/bin/python3 (the nodes' interpreter), Go (to build the client) and ansible-playbook",
)


@pytest.fixture
def server(monkeypatch, tmp_path):
    """The bundle lab.py ships to a node, unpacked here and its server started on a socket of its own."""
    spec = importlib.util.spec_from_file_location("lab", LAB_SCRIPT)
    lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lab)
    monkeypatch.setenv("KUBEIPVS_LAB_CACHE", str(Path.home() / ".cache" / "kubeipvs-lab"))
    root = tmp_path / "node"
    with tarfile.open(fileobj=io.BytesIO(lab.modserver_bundle(sys.executable)), mode="r:gz") as bundle:
        bundle.extractall(root, filter="data")
    path = tmp_path / "modserver.sock"
    process = subprocess.Popen(
        [str(SYSTEM_PYTHON), str(root / "modserver.py"), str(root / "preload"), str(path)],
        env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
    )
    deadline = time.monotonic() + 60
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the server did not open its socket"
    monkeypatch.setenv("KUBEIPVS_LAB_MODSERVER_SOCKET", str(path))
    yield {"client": root / "kubeipvs-lab-python", "socket": path, "pid": process.pid}
    process.terminate()
    process.wait(timeout=10)


def run_client(server, program, *args, env=None, cwd=None):
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(server["client"]), *args], input=program.encode(), capture_output=True, env=environment, cwd=cwd,
        timeout=60, check=False,
    )


def test_a_program_on_stdin_runs_in_a_child_of_the_server_as_python3_runs_it(server, tmp_path):
    program = (
        "import atexit, os, sys\n"
        "atexit.register(print, 'atexit ran')\n"
        "import __main__\n"
        "print(sys.argv, os.getcwd(), os.environ.get('FOO'), oct(os.umask(0)), hasattr(__main__, '__file__'))\n"
        "print(os.getsid(0) == os.getpid(), os.getppid())\n"
        "sys.exit(3)\n"
    )
    done = run_client(server, program, env={"FOO": "bar"}, cwd=tmp_path)
    lines = done.stdout.decode().splitlines()
    mask = os.umask(0)
    os.umask(mask)
    assert done.returncode == 3, done.stderr
    assert lines[0] == f"[''] {tmp_path} bar {oct(mask)} False"
    assert lines[1] == f"True {server['pid']}", "a session of its own, forked by the server"
    assert lines[2] == "atexit ran"


def test_errors_and_signals_end_the_client_as_they_end_the_program(server):
    failed = run_client(server, "raise ValueError('no good')\n")
    assert failed.returncode == 1
    assert b"ValueError: no good" in failed.stderr
    said = run_client(server, "import sys\nsys.exit('a message')\n")
    assert (said.returncode, said.stderr) == (1, b"a message\n")
    killed = run_client(server, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert killed.returncode == -signal.SIGKILL


def test_the_client_forwards_a_termination_to_the_program(server):
    client = subprocess.Popen(
        [str(server["client"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy(),
    )
    client.stdin.write(b"import sys, time\nprint('started', flush=True)\ntime.sleep(60)\n")
    client.stdin.close()
    assert client.stdout.readline() == b"started\n"
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == -signal.SIGTERM


def test_with_arguments_or_without_a_server_it_is_the_plain_interpreter(server, tmp_path):
    program = "import os, sys\nprint(sys.executable, os.getppid())\n"
    direct = run_client(server, "", "-c", program)
    assert direct.stdout.decode().split()[0] == str(SYSTEM_PYTHON)
    assert direct.stdout.decode().split()[1] != str(server["pid"])
    alone = run_client(server, program, env={"KUBEIPVS_LAB_MODSERVER_SOCKET": str(tmp_path / "none.sock")})
    assert alone.returncode == 0
    assert alone.stdout.decode().split()[1] != str(server["pid"])


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: parent
      ansible.builtin.shell: ps -o ppid= -p "$PPID"
      register: r0
    - ansible.builtin.ping:
      register: r1
    - ansible.builtin.command:
        argv: [sh, -c, 'echo "$FOO"; pwd; exit 3']
        chdir: /
      environment: {FOO: bar}
      ignore_errors: true
      register: r2
    - ansible.builtin.copy:
        content: "written\\n"
        dest: "{{ target }}"
      register: r3
    - ansible.builtin.stat:
        path: "{{ target }}"
        get_checksum: true
      register: r4
    - kubeipvs.node.kube_proxy_config:
        kubeconfig: /nonexistent/kubeconfig
        mode: nonsense
      ignore_errors: true
      register: r5
    - ansible.builtin.copy:
        content: "{{ [r0, r1, r2, r3, r4, r5] | to_json }}"
        dest: "{{ target }}.results"
"""
NAMES = ["parent", "ping", "command", "copy", "stat", "kube_proxy_config"]


def play(playbook, interpreter, target):
    environment = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook),
         "-e", json.dumps({"ansible_python_interpreter": str(interpreter), "ansible_pipelining": True,
                           "target": str(target)})],
        capture_output=True, text=True, env=environment, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = []
    for name, result in zip(NAMES, json.loads(Path(f"{target}.results").read_text()), strict=True):
        for varying in ("start", "end", "delta", "atime", "mtime", "ctime"):
            result.pop(varying, None)
        if "stat" in result:
            result["stat"] = {key: result["stat"][key] for key in ("exists", "checksum", "size", "mode")}
        results.append((name, result))
    return results


def test_ansible_modules_give_the_same_results_through_the_server(server, tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    plain = play(playbook, SYSTEM_PYTHON, tmp_path / "plain")
    served = play(playbook, server["client"], tmp_path / "served")
    assert [task[0] for task in served] == [task[0] for task in plain]
    plain_parent, served_parent = plain.pop(0)[1], served.pop(0)[1]
    assert served_parent["stdout"].strip() == str(server["pid"]), "the modules ran in the server's children"
    assert plain_parent["stdout"].strip() != str(server["pid"])
    for (name, through_server), through_python in zip(served, (task[1] for task in plain), strict=True):
        for result in (through_server, through_python):
            for varying in ("dest", "path", "invocation", "src", "uid", "gid", "owner", "group"):
                result.pop(varying, None)
        assert through_server == through_python, name
    assert (tmp_path / "served").read_text() == "written\n"


def test_a_connection_that_sends_no_descriptors_is_refused_and_the_server_goes_on(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(str(server["socket"]))
        bad.sendall(b"\x00\x00\x00\x02{}")
        bad.settimeout(20)
        assert bad.recv(10) == b""
    done = run_client(server, "print('still serving')\n")
    assert done.stdout == b"still serving\n"
