# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real Kubernetes cluster on this host for the controller-side tests.

The lab's control plane (tests/lab/cluster.py: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler of the pinned version) listens on a bridge this session creates; three Nodes,
``node1``..``node3``, are network namespaces of the host attached to that bridge, each with the
lab's pod runner (tests/lab/podrunner.py), which runs the kube-proxy pods bound to its node with
the real kube-proxy binary inside that namespace.

Names: ``kipt<4 hex>`` for the bridge, ``kipt<hex>-node<N>`` for the namespaces and
``kipt<hex>n<N>`` for the host ends of their veth pairs (other tests' namespaces are
``kubeipvs-t-*``); the bridge holds ``10.251.<S>.1/24`` with S picked so no address or route of
the host overlaps, node N is ``10.251.<S>.1<N>`` and, in IPv6, ``fd00:251:<S>::1<N>`` (a /64 on the
same bridge; both are the Node's InternalIPs, so kube-proxy's IPv6 proxier has a node IP of its
own, as on a dual-stack node). Everything else lives in one temporary folder
(``kubeipvs-kube-*``), whose ``session.json`` names the pytest process, the links, the namespaces
and the runners' PIDs: ``stop`` tears it all down by PID, and a session killed before its
teardown is swept by the next one (its pytest process is gone).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

LAB = Path(__file__).resolve().parents[1] / "lab"
sys.path.insert(0, str(LAB))
import cluster as lab_cluster  # noqa: E402  (tests/lab/cluster.py)

NODES = ("node1", "node2", "node3")
# The image the collection deploys by default, at the version the lab builds: the nodes' image
# store holds it (with the built kube-proxy binary), and nothing else.
KUBE_PROXY_REPOSITORY = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "roles/kube_proxy/defaults/main.yml").read_text())["kube_proxy_image"]
KUBE_PROXY_IMAGE = f"{KUBE_PROXY_REPOSITORY}:v{lab_cluster.version()}"
# Every kube-proxy the lab builds, newest first: the cluster's own, then the older ones a cluster on
# this control plane may run (tests/lab/cluster.py OLDER_KUBE_PROXIES); the nodes' image store holds each.
KUBE_PROXY_VERSIONS = lab_cluster.kube_proxy_versions()
KUBE_PROXY_IMAGES = {version: f"{KUBE_PROXY_REPOSITORY}:v{version}" for version in KUBE_PROXY_VERSIONS}
SESSION_PREFIX = "kubeipvs-kube-"
SUBNETS = ipaddress.ip_network("10.251.0.0/16")
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# Static tokens of the lab's API server (tests/lab/cluster.py TOKENS).
ADMIN_TOKEN = lab_cluster.TOKENS["admin"][0]
READER_TOKEN = lab_cluster.TOKENS["reader"][0]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line holds ``marker`` (a stale PID never hits another process)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def netns_pids(name: str) -> list[int]:
    result = ip("netns", "pids", name, check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.251.0.0/16 that overlaps no address or route of the host."""
    used = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        used.append(ipaddress.ip_network(line.split()[3], strict=False))
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        destination = line.split()[0]
        if destination[0].isdigit():
            used.append(ipaddress.ip_network(destination, strict=False))
    candidates = list(SUBNETS.subnets(new_prefix=24))[1:]
    secrets.SystemRandom().shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used if other.prefixlen > 0):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUBNETS}")


class AdminApi:
    """Requests as the lab's administrator (client certificate, user ``kubernetes-admin``) over one
    kept-alive connection; the audit log tells these apart from the tests' user (``admin``)."""

    def __init__(self, server: str, pki: Path):
        url = urllib.parse.urlparse(server)
        self.host, self.port = url.hostname, url.port
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.lock = threading.Lock()
        self.connection = None

    def call(self, method: str, path: str, body=None, content_type: str = "application/json"):
        """(status, decoded body) of one request."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": content_type}
        with self.lock:
            for attempt in (1, 2):
                if self.connection is None:
                    self.connection = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                                  timeout=60)
                try:
                    self.connection.request(method, path, body=payload, headers=headers)
                    response = self.connection.getresponse()
                    text = response.read().decode()
                    break
                except (OSError, http.client.HTTPException):  # a kept-alive connection the server closed
                    self.connection.close()
                    self.connection = None
                    if attempt == 2:
                        raise
        try:
            return response.status, json.loads(text) if text else {}
        except ValueError:
            return response.status, text

    def close(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.close()
                self.connection = None


class KubeCluster:
    """The session's cluster: start() brings it up, stop() takes every part down by PID."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX))
        self.prefix = f"kipt{secrets.token_hex(2)}"
        self.bridge = self.prefix
        self.namespaces = {node: f"{self.prefix}-{node}" for node in NODES}
        self.subnet = None
        self.runners: dict[str, subprocess.Popen] = {}
        self.plane = lab_cluster.ControlPlane(root=self.root / "k8s")
        self.api = None
        self.snapshot: dict = {}

    # ---- what the tests use

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def node_ip(self, node: str) -> str:
        return str(self.subnet.network_address + 10 + NODES.index(node) + 1)

    def node_ip6(self, node: str) -> str:
        """The node's IPv6 address: the IPv4 subnet's third octet names its /64."""
        return f"fd00:251:{self.subnet.network_address.packed[2]}::{10 + NODES.index(node) + 1}"

    def node_ips(self, node: str) -> list[str]:
        return [self.node_ip(node), self.node_ip6(node)]

    @property
    def server(self) -> str:
        return self.plane.server

    @property
    def ca_cert(self) -> Path:
        return self.plane.pki / "ca.crt"

    def host_root(self, node: str) -> Path:
        """The folder under which ``node``'s hostPath volumes live."""
        return self.root / node / "host"

    def kubeconfig(self, path: Path, token: str = ADMIN_TOKEN, server: str | None = None) -> Path:
        """A kubeconfig for the user of ``token`` (CA inline, as kubeadm writes them)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": server or self.server,
                "certificate-authority-data": base64.b64encode(self.ca_cert.read_bytes()).decode()}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        return path

    # ---- session record, for the teardown and for the sweep after a killed session

    def record(self) -> None:
        session = {"pid": os.getpid(), "bridge": self.bridge, "namespaces": sorted(self.namespaces.values()),
                   "runners": {node: runner.pid for node, runner in self.runners.items()}}
        (self.root / "session.json").write_text(json.dumps(session, indent=2))

    @staticmethod
    def sweep() -> list[str]:
        """Tear down what sessions whose pytest process is gone left behind; returns what was removed."""
        removed = []
        for folder in Path(tempfile.gettempdir()).glob(SESSION_PREFIX + "*"):
            try:
                session = json.loads((folder / "session.json").read_text())
            except (OSError, ValueError):
                continue
            if alive(session["pid"], "pytest"):
                continue
            for pid in session.get("runners", {}).values():
                if alive(pid, str(folder)):
                    os.kill(pid, signal.SIGKILL)
            for namespace in session.get("namespaces", []):
                for pid in netns_pids(namespace):
                    os.kill(pid, signal.SIGKILL)
            lab_cluster.ControlPlane(root=folder / "k8s").down()
            for namespace in session.get("namespaces", []):
                ip("netns", "del", namespace, check=False)
            ip("link", "del", session["bridge"], check=False)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        return removed

    # ---- start

    def start(self) -> KubeCluster:
        for folder in self.sweep():
            lab_cluster.log(f"removed what a killed test session left behind: {folder}")
        self.record()
        self.plug_nodes()
        self.plane = lab_cluster.ControlPlane(root=self.root / "k8s", bind_address=self.gateway,
                                              advertise_address=self.gateway)
        self.plane.up()
        self.api = AdminApi(self.server, self.plane.pki)
        for index, node in enumerate(NODES, start=1):
            certificate, key = lab_cluster.node_certificate(self.plane.pki, node)
            folder = self.root / node
            for sub in ("host", "state", "logs"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            config = {
                "node": node, "server": self.plane.node_server, "ca": str(self.ca_cert),
                "cert": str(certificate), "key": str(key),
                "addresses": [*({"type": "InternalIP", "address": address} for address in self.node_ips(node)),
                              {"type": "Hostname", "address": node}],
                "pod_cidrs": [f"10.244.{index}.0/24"], "kubelet_version": self.plane.info["kubernetes"],
                "images": {image: {"files": {"/usr/local/bin/kube-proxy": str(
                    lab_cluster.binaries_dir(version) / "kube-proxy")}} for version, image in KUBE_PROXY_IMAGES.items()},
                "netns": self.namespaces[node], "host_root": str(folder / "host"),
                "state_dir": str(folder / "state"), "log_dir": str(folder / "logs"),
            }
            (folder / "podrunner.json").write_text(json.dumps(config, indent=2))
            with open(folder / "podrunner.log", "ab") as output:
                self.runners[node] = subprocess.Popen(
                    [sys.executable, str(LAB / "podrunner.py"), "--config", str(folder / "podrunner.json")],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
            self.record()
        self.wait_for_nodes()
        self.take_snapshot()
        return self

    def plug_nodes(self) -> None:
        """The bridge with the gateway address, and one namespace per node wired to it."""
        with lab_cluster.lab.locked(lab_cluster.lab.cache_dir() / "kube-subnets.lock"):  # one subnet, one session
            self.subnet = free_subnet()
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        for index, node in enumerate(NODES, start=1):
            namespace, host_end = self.namespaces[node], f"{self.prefix}n{index}"
            ip("netns", "add", namespace)
            ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            ip("link", "set", host_end, "master", self.bridge, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "addr", "add", f"{self.node_ip(node)}/24", "dev", "eth0")
            ip("-n", namespace, "addr", "add", f"{self.node_ip6(node)}/64", "dev", "eth0", "nodad")
            ip("-n", namespace, "link", "set", "eth0", "up")
            ip("-n", namespace, "route", "add", "default", "via", self.gateway)

    def wait_for_nodes(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        ready = set()
        while time.monotonic() < deadline:
            for node, runner in self.runners.items():
                if runner.poll() is not None:
                    raise RuntimeError(f"the pod runner of {node} exited: {self.runner_log(node)}")
            _status, nodes = self.api.call("GET", "/api/v1/nodes")
            ready = {item["metadata"]["name"] for item in nodes.get("items") or []
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in item["status"].get("conditions") or [])}
            if ready >= set(NODES):
                return
            time.sleep(0.5)
        raise RuntimeError(f"nodes not Ready after {START_TIMEOUT:.0f}s: {sorted(set(NODES) - ready)}")

    def runner_log(self, node: str, lines: int = 20) -> str:
        try:
            text = (self.root / node / "podrunner.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- between tests: what a test created goes, what the cluster had stays

    # (list path, delete path) of the collections tests write to; namespaces they create go whole.
    COLLECTIONS = (
        "/apis/apps/v1/namespaces/kube-system/daemonsets",
        "/api/v1/namespaces/kube-system/configmaps",
        "/api/v1/namespaces/kube-system/serviceaccounts",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings",
        "/api/v1/namespaces/default/services",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        "/api/v1/namespaces/default/configmaps",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "/api/v1/namespaces",
    )

    def names(self, path: str) -> set[str]:
        status, listing = self.api.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {listing}")
        return {item["metadata"]["name"] for item in listing.get("items") or []}

    def take_snapshot(self) -> None:
        """What the cluster holds before any test, once its controllers have published what they
        publish into the namespaces the tests use (the CA bundle, the default service accounts)."""
        wanted = ("/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt",
                  "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
                  "/api/v1/namespaces/kube-system/serviceaccounts/default",
                  "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self.api.call("GET", path)[0] == 200 for path in wanted):
            if time.monotonic() > deadline:
                raise RuntimeError("the controllers did not publish the CA bundle and default service accounts")
            time.sleep(0.5)
        self.snapshot = {path: self.names(path) for path in self.COLLECTIONS}

    def clean(self, timeout: float = 180.0) -> None:
        """Delete what is not in the snapshot, events of kube-system, and wait until no pod is left."""
        for path in self.COLLECTIONS:
            extra = self.names(path) - self.snapshot[path]
            if len(extra) > 20 and len(self.snapshot[path]) <= 5:  # the state tests' thousand, at once
                keep = ",".join(f"metadata.name!={name}" for name in sorted(self.snapshot[path]))
                status, _body = self.api.call("DELETE", f"{path}?fieldSelector={urllib.parse.quote(keep)}")
                if status == 200:
                    extra = self.names(path) - self.snapshot[path]
            for name in sorted(extra):
                status, body = self.api.call("DELETE", f"{path}/{name}",
                                             {"kind": "DeleteOptions", "apiVersion": "v1",
                                              "propagationPolicy": "Background"})
                if status not in (200, 202, 404, 409):
                    raise RuntimeError(f"DELETE {path}/{name}: {status} {body}")
        self.api.call("DELETE", "/api/v1/namespaces/kube-system/events")
        deadline = time.monotonic() + timeout
        while True:
            pods = self.names("/api/v1/pods")
            namespaces = self.names("/api/v1/namespaces") - self.snapshot["/api/v1/namespaces"]
            if not pods and not namespaces:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"left after {timeout:.0f}s: pods {sorted(pods)}, namespaces {sorted(namespaces)}")
            time.sleep(0.5)

    # ---- stop

    def stop(self) -> None:
        """Runners first (each stops its containers), then anything left in the namespaces, the
        control plane, the namespaces and the bridge. Raises when something had to be killed."""
        problems = []
        if self.api is not None:
            self.api.close()
        for node, runner in self.runners.items():
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
                try:
                    runner.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    runner.kill()
                    runner.wait()
                    problems.append(f"the pod runner of {node} (pid {runner.pid}) ignored SIGTERM")
        for namespace in self.namespaces.values():
            deadline = time.monotonic() + 10
            while netns_pids(namespace) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in netns_pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    os.kill(pid, signal.SIGKILL)
                    problems.append(f"pid {pid} was left in {namespace}: {command}")
        self.plane.down()
        for namespace in self.namespaces.values():
            ip("netns", "del", namespace, check=False)
        ip("link", "del", self.bridge, check=False)
        leftovers = [name for name in self.namespaces.values() if name in ip("netns", "list").stdout.split()]
        if ip("link", "show", self.bridge, check=False).returncode == 0:
            leftovers.append(self.bridge)
        if leftovers:
            problems.append(f"not deleted: {', '.join(leftovers)}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        if problems:
            raise RuntimeError("; ".join(problems))
