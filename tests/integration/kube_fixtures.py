# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the kube_proxy* tests: the session's real cluster (kube_cluster.py: the lab's
control plane and three Nodes in network namespaces running the real kube-proxy), a kubeconfig
of the tests' user, the API server's audit log to prove what a module sent, a fault-injecting
proxy for what a real server does not do on demand (fault_proxy.py), and a runner that executes
the collection's modules the way users do (``ansible-playbook`` on localhost).

Users: the modules run as ``admin`` (the lab's static token ``lab-admin``, group
``system:masters``); the fixtures seed and inspect as ``kubernetes-admin`` (client certificate).
The audit log records both, so "a module wrote nothing" is "no write request of ``admin``"."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

COLLECTION = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = COLLECTION.parents[2] if COLLECTION.parent.name == "kubeipvs" else \
    COLLECTION / ".build" / "collections"
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(COLLECTIONS_PATH) not in sys.path:  # the collection's module_utils, for the client tests
    sys.path.append(str(COLLECTIONS_PATH))

# Imported after the sys.path changes above; the first two are re-exported for the client tests.
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import (  # noqa: E402  # pylint: disable=unused-import
    KubeIpvsError,  # noqa: F401
)
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s import (  # noqa: E402  # pylint: disable=unused-import
    _client as k8s_client,
)
from fault_proxy import FaultProxy  # noqa: E402
from kube_cluster import (  # noqa: E402
    ADMIN_TOKEN,
    KUBE_PROXY_IMAGE,
    NODES,
    AdminApi,
    KubeCluster,
    lab_cluster,
)

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
TEST_USER = "admin"  # the user of ADMIN_TOKEN, whose requests the audit log is read for
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
# Generous: the suite shares two cores with VMs and other test runs.
WAIT = 180.0

KINDS = dict(k8s_client.RESOURCES, **{
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
})


def path_of(kind, namespace=None, name=None):
    prefix, plural, namespaced = KINDS[kind]
    path = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "")


@pytest.fixture(scope="session")
def kube_cluster():
    """The session's real cluster, started by the first test that needs it, torn down at the end."""
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes tests need root (network namespaces, the pod runners): run 'make pytest' as root")
    cluster = KubeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kube_cluster, tmp_path):
    """The cluster for one test; what the test created is removed at its teardown (pods waited for)."""
    facade = Cluster(kube_cluster, tmp_path)
    try:
        yield facade
    finally:
        try:
            for undo in reversed(facade.undo):
                undo()
        finally:
            kube_cluster.clean()


class Request(tuple):
    """One request of the tests' user, from the audit log: (verb, requestURI, response code)."""

    __slots__ = ()

    def __new__(cls, verb, uri, code):
        return super().__new__(cls, (verb, uri, code))

    verb = property(lambda self: self[0])
    uri = property(lambda self: self[1])
    code = property(lambda self: self[2])

    @property
    def dry_run(self):
        return urllib.parse.parse_qs(urllib.parse.urlparse(self.uri).query).get("dryRun") == ["All"]


class Cluster:
    """The session's cluster as one test sees it: seed and inspect objects, run modules, read the
    audit log of the test's own requests."""

    def __init__(self, kube: KubeCluster, tmp_path: Path):
        self.kube = kube
        self.api = kube.api
        self.tmp_path = tmp_path
        self.server = kube.server
        self.token = ADMIN_TOKEN
        self.ca_cert = str(kube.ca_cert)
        self.kubeconfig = str(kube.kubeconfig(tmp_path / "kubeconfig"))
        self.undo = []
        self.audit_start = self.audit_size()

    # ---- objects, as the lab's administrator

    def call(self, method, path, body=None, content_type="application/json", ok=(200, 201, 202)):
        status, answer = self.api.call(method, path, body, content_type)
        if status not in ok:
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return answer

    def get(self, kind, name, namespace="kube-system"):
        status, answer = self.api.call("GET", path_of(kind, namespace, name))
        if status == 404:
            return None
        if status != 200:
            raise AssertionError(f"GET {kind} {namespace}/{name}: {status} {answer}")
        return answer

    def list(self, kind, namespace=None, **query):
        path = path_of(kind, namespace) + ("?" + urllib.parse.urlencode(query) if query else "")
        return self.call("GET", path)["items"]

    def add(self, obj):
        """Create ``obj``, or replace the stored one of that name with it."""
        kind, metadata = obj["kind"], obj["metadata"]
        namespace = metadata.get("namespace") or ("kube-system" if KINDS[kind][2] else None)
        status, answer = self.api.call("POST", path_of(kind, namespace), obj)
        if status == 409 and answer.get("reason") == "AlreadyExists":
            current = self.get(kind, metadata["name"], namespace)
            replacement = json.loads(json.dumps(obj))
            replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self.call("PUT", path_of(kind, namespace, metadata["name"]), replacement)
        if status != 201:
            raise AssertionError(f"POST {kind} {metadata.get('name')}: {status} {answer}")
        return answer

    def create_all(self, objects, connections=4):
        """Create many objects, over a few connections at once (the state tests create >1000).

        A Service whose ClusterIP an earlier test's deleted Service still holds is created again for
        up to WAIT seconds: the API server releases a deleted Service's IPAddress object on its own
        time (seen once: 422 "provided IP is already allocated" for an IP no live Service had)."""
        queue = list(reversed(objects))
        failures = []
        deadline = time.monotonic() + WAIT

        def work():
            api = AdminApi(self.server, self.kube.plane.pki)
            try:
                while queue:
                    try:
                        obj = queue.pop()
                    except IndexError:
                        return
                    namespace = obj["metadata"].get("namespace")
                    while True:
                        status, answer = api.call("POST", path_of(obj["kind"], namespace), obj)
                        if status != 422 or "provided IP is already allocated" not in str(answer) \
                                or time.monotonic() > deadline:
                            break
                        time.sleep(0.5)
                    if status != 201:
                        failures.append(f"{obj['kind']} {obj['metadata']['name']}: {status} {answer}")
            finally:
                api.close()
        workers = [threading.Thread(target=work) for worker in range(connections)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures, failures[:5]

    def patch(self, kind, name, patch, namespace="kube-system", strategic=False):
        content_type = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self.call("PATCH", path_of(kind, namespace, name), patch, content_type)

    def pods(self, node=None, namespace="kube-system", terminating=False):
        """The pods (of ``node``), by default without those being deleted."""
        query = {"fieldSelector": f"spec.nodeName={node}"} if node else {}
        return [p for p in self.list("Pod", namespace, **query)
                if terminating or not p["metadata"].get("deletionTimestamp")]

    def wait_for(self, predicate, timeout=WAIT, interval=0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s")

    def wait_for_kube_proxy(self, nodes=NODES, timeout=WAIT):
        """Until every node in ``nodes`` runs exactly one Ready kube-proxy pod and no other node one."""
        def settled():
            pods = self.pods(terminating=True)
            return sorted(p["spec"].get("nodeName") or "" for p in pods) == sorted(nodes) and all(map(pod_ready, pods))
        self.wait_for(settled, timeout)

    def node_ip(self, node):
        return self.kube.node_ip(node)

    def node_ips(self, node):
        """The node's InternalIPs, IPv4 then IPv6."""
        return self.kube.node_ips(node)

    def host_root(self, node):
        return self.kube.host_root(node)

    def kubeconfig_for(self, token, server=None, name=None):
        """A kubeconfig of another user (or of this one at another address)."""
        path = self.tmp_path / (name or f"kubeconfig-{secrets.token_hex(4)}")
        return str(self.kube.kubeconfig(path, token, server))

    def fault_proxy(self):
        """A fault-injecting proxy in front of the API server for this test; ``.kubeconfig`` reaches
        the cluster through it as the tests' user."""
        pki = self.kube.plane.pki
        lab_cluster.issue_certificate(pki, "fault-proxy", "/CN=kubeipvs-fault-proxy", "serverAuth", ("IP:127.0.0.1",))
        proxy = FaultProxy(self.server, pki / "ca.crt", pki / "fault-proxy.crt", pki / "fault-proxy.key",
                           self.api).start()
        self.undo.append(proxy.stop)
        proxy.kubeconfig = self.kubeconfig_for(self.token, proxy.url, name=f"kubeconfig-proxy-{secrets.token_hex(4)}")
        return proxy

    # ---- the audit log: what the tests' user sent since the test started

    def audit_size(self):
        try:
            return self.kube.plane.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, user=TEST_USER):
        """Every request of ``user`` since the test started (or since ``mark``), in order, as
        Request tuples.

        The API server writes an entry once it has answered; a request of the administrator with a
        marker, sent after the test's own requests and waited for in the log, makes sure the log
        holds theirs too."""
        marker = f"audit-marker-{secrets.token_hex(6)}"
        self.api.call("GET", f"/api/v1/namespaces/default/configmaps/{marker}")
        deadline = time.monotonic() + 60
        while True:
            with open(self.kube.plane.audit_log, "rb") as log:
                log.seek(self.audit_start)
                data = log.read()
            data = data[:data.rfind(b"\n") + 1]  # whole entries only: the last may be half written
            if marker.encode() in data:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the audit log did not record the marker request within 60s")
            time.sleep(0.1)
        self.audit_read = self.audit_start + len(data)
        entries = [json.loads(line) for line in data.splitlines() if line.strip()]
        return [Request(e["verb"], e["requestURI"], (e.get("responseStatus") or {}).get("code"))
                for e in entries if e.get("stage") == "ResponseComplete" and e["user"]["username"] == user]

    def mark(self):
        """From here on, ``requests`` and ``writes`` show only what comes next."""
        self.requests()
        self.audit_start = self.audit_read

    def writes(self, user=TEST_USER):
        """The writes (create, update, patch, delete) among ``requests``."""
        return [r for r in self.requests(user) if r.verb in WRITE_VERBS]

    # ---- running the collection

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
    for name in ("K8S_AUTH_KUBECONFIG", "KUBECONFIG"):
        env.pop(name, None)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if not results.exists():
        raise AssertionError(f"ansible-playbook wrote no results:\n{completed.stdout}\n{completed.stderr}")
    return json.loads(results.read_text())


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
# The same with conntrack left alone (maxPerCore 0), as kube-proxy needs in a node that is a network
# namespace: nf_conntrack_max is read-only there, and kube-proxy exits when it cannot set it.
KUBEADM_CONFIG_IN_A_NAMESPACE = KUBEADM_CONFIG.replace("maxPerCore: null", "maxPerCore: 0")
# kubeadm's kubeconfig.conf for kube-proxy: the service account's token and CA, the API server's address.
KUBEADM_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
"""
# A node selector no node matches: the DaemonSet exists, no pod starts.
NO_NODE = {"kubeipvs.test/no-such-node": "true"}


def kubeadm_daemonset(image=KUBE_PROXY_IMAGE, node_selector=None):
    """The DaemonSet `kubeadm init` creates (its addon manifest, v1.31), without the collection's label."""
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-proxy"}},
                "spec": {
                    "containers": [{
                        "name": "kube-proxy", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf",
                                    "--hostname-override=$(NODE_NAME)"],
                        "securityContext": {"privileged": True},
                        "volumeMounts": [{"mountPath": "/var/lib/kube-proxy", "name": "kube-proxy"},
                                         {"mountPath": "/run/xtables.lock", "name": "xtables-lock", "readOnly": False},
                                         {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": True}],
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    }],
                    "hostNetwork": True,
                    "serviceAccountName": "kube-proxy",
                    "volumes": [{"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                                {"name": "xtables-lock",
                                 "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                                {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}}],
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": node_selector or {"kubernetes.io/os": "linux"},
                    "priorityClassName": "system-node-critical",
                },
            },
        },
    }


def seed_kubeadm_kube_proxy(cluster, config_text=None, run=True, image=KUBE_PROXY_IMAGE):
    """kubeadm's kube-proxy: ConfigMap, ServiceAccount, the ClusterRoleBinding to system:node-proxier,
    the Role and RoleBinding that let joining nodes read the ConfigMap, and the DaemonSet (of
    ``image``) - none of them with the collection's label. ``run``: kube-proxy runs on every node
    (waited for until each pod is Ready; the configuration defaults to one kube-proxy can run with in
    a namespace); otherwise the DaemonSet selects no node and no pod starts."""
    if config_text is None:
        config_text = KUBEADM_CONFIG_IN_A_NAMESPACE if run else KUBEADM_CONFIG
    cluster.add({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
                 "data": {"config.conf": config_text,
                          "kubeconfig.conf": KUBEADM_KUBECONFIG.format(server=cluster.kube.plane.node_server)}})
    cluster.add({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system"}})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "kubeadm:node-proxier"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "system:node-proxier"},
                 "subjects": [{"kind": "ServiceAccount", "name": "kube-proxy", "namespace": "kube-system"}]})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
                 "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kube-proxy"],
                            "verbs": ["get"]}]})
    cluster.add({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kube-proxy"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                               "name": "system:bootstrappers:kubeadm:default-node-token"}]})
    cluster.add(kubeadm_daemonset(image=image, node_selector=None if run else NO_NODE))
    if run:
        cluster.wait_for_kube_proxy()


def pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
