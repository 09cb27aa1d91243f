"""The lab's UDP canary counts as a resolver would: a query answered only when sent again is
"resent", one never answered within 5 s is "failed", and a late answer to an earlier query does not
count for the current one. Against a UDP server on loopback that loses and delays on purpose."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

CANARY = Path(__file__).resolve().parents[2] / "lab" / "canary.sh"


class Server:
    """Answers "name\\n" + query, as the lab's pods do, except: the first send of query 2 is
    answered 1.5 s late (its resend at once), every send of query 4 is lost."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.seen = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        while not self.stopped.is_set():
            try:
                query, client = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            sends = self.seen[query] = self.seen.get(query, 0) + 1
            if query == b"query 4":
                continue
            if query == b"query 2" and sends == 1:
                threading.Timer(1.5, self.sock.sendto, (b"pod\n" + query, client)).start()
                continue
            self.sock.sendto(b"pod\n" + query, client)


def canary(*args, env):
    return subprocess.run(["bash", str(CANARY), *args], env=env, check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_udp_canary_resends_like_a_resolver_and_fails_only_an_unanswered_query(tmp_path):
    server = Server()
    server.thread.start()
    env = {**os.environ, "KUBEIPVS_CANARY_DIR": str(tmp_path)}
    try:
        canary("start", "dns", "udp", f"127.0.0.1:{server.port}", env=env)
        deadline = time.monotonic() + 20
        while server.seen.get(b"query 5", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        canary("stop", env=env)
        server.stopped.set()
    counted = json.loads(canary("count", "dns", env=env))
    log = (tmp_path / "dns.log").read_text().splitlines()
    assert [line.split()[0] for line in log[:4]] == ["ok", "resent", "ok", "failed"], log
    assert server.seen[b"query 4"] == 5  # sent at 0, 1, 2, 3 and 4 s
    assert server.seen[b"query 2"] == 2
    assert counted["resent"] == 1 and counted["failed"] == 1 and counted["ok"] >= 2
    assert counted["failures"][0].endswith("TimeoutError") and len(counted["resends"]) == 1
    assert counted["steps"] == [{"step": "start", "ok": counted["ok"], "slow": counted["slow"], "resent": 1,
                                 "failed": 1}]
