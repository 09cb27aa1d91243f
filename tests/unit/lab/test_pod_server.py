"""The lab pods' server (tests/lab/pod.sh) against the canaries and the clients the scenarios use:
new connections, one keep-alive connection, DNS-like UDP, curl and urllib - each gets the pod's
name - and a client that hangs up mid-request does not stop it answering the others."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[2] / "lab"


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pod(tmp_path):
    source = re.search(r"<<'PY'\n(.*?)\nPY\n", (LAB / "pod.sh").read_text(), re.S).group(1)
    (tmp_path / "server.py").write_text(source)
    http_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    server = subprocess.Popen([sys.executable, str(tmp_path / "server.py"), "node1/canary", str(http_port), str(udp_port)])
    try:
        for _attempt in range(100):
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield http_port, udp_port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def canary(*args, env):
    return subprocess.run(["bash", str(LAB / "canary.sh"), *args], env=env, check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_every_client_the_scenarios_use_gets_the_pods_name(pod, tmp_path):
    http_port, udp_port = pod
    url = f"http://127.0.0.1:{http_port}/"
    assert urllib.request.urlopen(url, timeout=5).read() == b"node1/canary\n"
    curl = subprocess.run(["curl", "-fsS", "-m", "5", url, f"http://[::1]:{http_port}/"], capture_output=True, check=True)
    assert curl.stdout == b"node1/canary\n" * 2, "two requests on curl's one keep-alive connection, IPv4 and IPv6"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"query 1", ("127.0.0.1", udp_port))
        assert sock.recv(512) == b"node1/canary\nquery 1"

    half = socket.create_connection(("127.0.0.1", http_port))
    half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: a request never finished
    half.close()

    env = {**os.environ, "KUBEIPVS_CANARY_DIR": str(tmp_path)}
    try:
        canary("start", "new", "http", url, env=env)
        canary("start", "held", "hold", url, env=env)
        canary("start", "dns", "udp", f"127.0.0.1:{udp_port}", env=env)
        time.sleep(3)
    finally:
        canary("stop", env=env)
    for name, least in (("new", 5), ("held", 3), ("dns", 3)):
        count = json.loads(canary("count", name, env=env))
        assert count["failed"] == 0 and count["ok"] >= least, (name, count)


def test_the_http_canary_fails_an_answer_that_is_not_200(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        env = {**os.environ, "KUBEIPVS_CANARY_DIR": str(tmp_path)}
        try:
            canary("start", "new", "http", f"http://127.0.0.1:{listener.getsockname()[1]}/", env=env)
            for _answer in range(2):
                connection, _peer = listener.accept()
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                connection.close()
            time.sleep(0.5)
        finally:
            canary("stop", env=env)
    count = json.loads(canary("count", "new", env=env))
    assert count["ok"] == 0 and count["failed"] >= 1, count
