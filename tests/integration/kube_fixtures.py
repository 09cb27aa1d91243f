# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the kube_proxy* tests: the API test server on a free loopback port, a kubeconfig
pointing at it, and a runner that executes the collection's modules the way users do
(``ansible localhost -m kubeipvs.node.<module>``)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

COLLECTION = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = COLLECTION.parents[2] if COLLECTION.parent.name == "kubeipvs" else \
    COLLECTION / ".build" / "collections"
sys.path.insert(0, str(COLLECTION / "tests"))
if str(COLLECTIONS_PATH) not in sys.path:  # the collection's module_utils, for the client tests
    sys.path.append(str(COLLECTIONS_PATH))

# Imported after the sys.path changes above; the first two are re-exported for the client tests.
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import (  # noqa: E402  # pylint: disable=unused-import
    KubeIpvsError,  # noqa: F401
)
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s import (  # noqa: E402  # pylint: disable=unused-import
    _client as k8s_client,  # noqa: F401
)
from apiserver.server import ApiServer  # noqa: E402

NODES = ("node1", "node2", "node3")
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


class Cluster:
    """The running test server plus helpers to seed and inspect its objects."""

    def __init__(self, server, kubeconfig, token, tmp_path):
        self.server = server
        self.store = server.store
        self.faults = server.faults
        self.kubeconfig = str(kubeconfig)
        self.token = token
        self.tmp_path = tmp_path

    def add(self, obj):
        return self.store.put(obj)

    def get(self, kind, name, namespace="kube-system"):
        return self.store.get(kind, namespace if kind not in ("Node", "ClusterRoleBinding") else "", name)

    def pods(self, node=None, namespace="kube-system"):
        return [p for p in self.store.list("Pod", namespace)
                if node is None or p["spec"].get("nodeName") == node]

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s")

    def writes(self):
        return [r for r in self.store.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]

    def module(self, name, check=False, diff=False, auth=True, **args):
        """Run kubeipvs.node.<name> with ``args`` through ansible-playbook; returns the task's result."""
        return self.modules([(name, dict(args, _check=check, _diff=diff, _auth=auth))])[0]

    def modules(self, calls):
        """Run several (module, args) calls as the tasks of one play (one ansible-playbook start)."""
        tasks = []
        for name, args in calls:
            args = dict(args)
            check, diff, auth = args.pop("_check", False), args.pop("_diff", False), args.pop("_auth", True)
            environment = args.pop("_environment", {})
            if auth:
                args.setdefault("kubeconfig", self.kubeconfig)
            tasks.append({"name": name, f"kubeipvs.node.{name}": args, "check_mode": check, "diff": diff,
                          "ignore_errors": True, "environment": environment})
        playbook = self.tmp_path / f"play-{secrets.token_hex(4)}.yml"
        playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
        return self.playbook(playbook)

    def playbook(self, path, inventory="localhost,", **extra_vars):
        """Run a playbook; returns the result of every task, in order."""
        extra_vars.setdefault("ansible_python_interpreter", sys.executable)
        command = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-c", "local", str(path), "-e", json.dumps(extra_vars)]
        return run_ansible(command, self.tmp_path)


# ansible-core's stdout callbacks drop ``diff`` from what they print; this one writes every task
# result, whole, to the file named by KUBEIPVS_RESULTS.
RESULTS_CALLBACK = """
import json
import os

from ansible.plugins.callback import CallbackBase
from ansible.vars.clean import module_response_deepcopy, strip_internal_keys


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "kubeipvs_results"

    def __init__(self):
        super().__init__()
        self.results = []

    def keep(self, result, **status):
        document = strip_internal_keys(module_response_deepcopy(result._result))
        document.update(status)
        self.results.append(json.loads(json.dumps(document, default=str)))

    def v2_runner_on_ok(self, result):
        self.keep(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.keep(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self.keep(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self.keep(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["KUBEIPVS_RESULTS"], "w") as stream:
            json.dump(self.results, stream)
"""


def run_ansible(command, tmp_path):
    callbacks = tmp_path / "callbacks"
    callbacks.mkdir(exist_ok=True)
    (callbacks / "kubeipvs_results.py").write_text(RESULTS_CALLBACK)
    results = tmp_path / f"results-{secrets.token_hex(4)}.json"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_CALLBACK_PLUGINS=str(callbacks),
               ANSIBLE_STDOUT_CALLBACK="kubeipvs_results", KUBEIPVS_RESULTS=str(results),
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1")
    env.pop("K8S_AUTH_KUBECONFIG", None)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if not results.exists():
        raise AssertionError(f"ansible-playbook wrote no results:\n{completed.stdout}\n{completed.stderr}")
    return json.loads(results.read_text())


def write_kubeconfig(path, server_url, token):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def node(name):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{NODES.index(name) + 11}"},
                                     {"type": "Hostname", "address": name}]}}


@pytest.fixture
def cluster(tmp_path):
    """A fresh API test server with three Linux nodes; stopped (its threads joined) at teardown."""
    token = secrets.token_hex(16)
    server = ApiServer("127.0.0.1", 0, token, read_only_tokens=("viewer-token",), recreate_delay=0.1,
                       ready_delay=0.1)
    for name in NODES:
        server.store.put(node(name))
    server.start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, token)
    try:
        yield Cluster(server, kubeconfig, token, tmp_path)
    finally:
        server.stop()


# What `kubeadm init` leaves in kube-system/kube-proxy (v1.31, trimmed to the usual keys), plus a comment.
KUBEADM_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
# set by the cluster admin
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
iptables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 15m0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
mode: ""
nodePortAddresses: null
"""


def seed_kubeadm_kube_proxy(cluster, config_text=KUBEADM_CONFIG, version="v1.31.2"):
    """kubeadm's ConfigMap and DaemonSet (no kubeipvs.node label); the controller starts the pods."""
    cluster.add({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
                 "data": {"config.conf": config_text, "kubeconfig.conf": "apiVersion: v1\nkind: Config\n"}})
    cluster.add({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system"}})
    cluster.add({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"},
                     "generation": 1},
        "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                 "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                              "spec": {"containers": [{"name": "kube-proxy",
                                                       "image": f"registry.k8s.io/kube-proxy:{version}"}],
                                       "nodeSelector": {"kubernetes.io/os": "linux"}}}},
        "status": {},
    })
    cluster.wait_for(lambda: len([p for p in cluster.pods() if pod_ready(p)]) == len(NODES))


def pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
