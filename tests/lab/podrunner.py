"""The lab's pod runner: the part of a kubelet that runs host-network pods such as kube-proxy's.

The lab's nodes have no container runtime (see docs/lab.md for why), so this program does exactly
the kubelet's job for the pods bound to its node, and nothing else of the cluster is imitated:

- registers its Node (addresses, pod CIDRs, capacity, a Ready condition refreshed every minute);
- watches the pods bound to the node; for each one with ``hostNetwork: true`` it "pulls" the image
  from the node's image store (a copy of the binaries the controller built), lays out its volumes
  as the kubelet does (configMap, secret, projected service-account token with ``ca.crt`` and
  ``namespace``, hostPath, emptyDir; configMap/projected files through ``..data`` symlink swaps,
  refreshed while the pod runs), and starts each container's command as a privileged container:
  a mount namespace of its own, chrooted to a copy-on-write view of the node's root with the
  image's directories and the volumes bind-mounted at their paths (see ``in_container``);
- expands ``$(VAR)`` in command and args from the container's env (values, fieldRefs);
- runs readiness and liveness probes (httpGet, tcpSocket, exec), restarts exited containers with
  the kubelet's back-off (10 s doubling to 5 min), reports the pod's phase, conditions and
  container statuses, and records the kubelet's events (Pulled, Created, Started, Killing,
  BackOff, Unhealthy, Failed);
- on deletion sends SIGTERM, waits the grace period, sends SIGKILL, then deletes the pod.

It speaks to the API server with the node's client certificate, as a kubelet does (the Node
authorizer and NodeRestriction apply), using the Python standard library only.

usage: podrunner.py --config /etc/kubeipvs-podrunner/config.json
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
VOLUME_REFRESH = 60.0
NODE_REFRESH = 60.0
TOKEN_EXPIRATION = 3607
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVICE_ACCOUNT_KEYS = {"token", "ca.crt", "namespace"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(message: str) -> None:
    print(f"podrunner: {message}", flush=True)


class ApiError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"{status}: {body[:500]}")
        self.status = status


# ----------------------------------------------------------------------------------------------
# Pure helpers (unit-tested on the controller)


def expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, the rest stays."""
    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def field_value(pod: dict, path: str, node_ips: list) -> str:
    values = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.uid": pod["metadata"]["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": node_ips[0] if node_ips else "",
        "status.podIP": node_ips[0] if node_ips else "",
        "status.hostIPs": ",".join(node_ips),
        "status.podIPs": ",".join(node_ips),
    }
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (pod["metadata"].get(match.group(1)) or {}).get(match.group(2), "")
    if path not in values:
        raise ValueError(f"fieldRef {path} is not supported")
    return values[path]


def container_env(pod: dict, container: dict, node_ips: list, service_env: dict) -> dict:
    """The container's environment as the kubelet builds it: PATH, the kubernetes Service's
    variables, then the container's env in order (later entries may refer to earlier ones)."""
    env = {"PATH": CONTAINER_PATH, "HOSTNAME": pod["spec"].get("nodeName", "")}
    env.update(service_env)
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(item.get("value") or "", env)
        elif (item.get("valueFrom") or {}).get("fieldRef"):
            env[item["name"]] = field_value(pod, item["valueFrom"]["fieldRef"]["fieldPath"], node_ips)
        else:
            raise ValueError(f"env {item['name']}: only value and fieldRef are supported")
    return env


def container_argv(container: dict, env: dict) -> list:
    argv = [expand(part, env) for part in (container.get("command") or []) + (container.get("args") or [])]
    if not argv:
        raise ValueError("the container has no command (images here have no entrypoint)")
    return argv


def backoff(restarts: int) -> float:
    return min(BACKOFF_INITIAL * (2 ** max(restarts - 1, 0)), BACKOFF_MAX)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def atomic_write(directory: str, files: dict) -> bool:
    """Write ``files`` (name -> bytes) into ``directory`` the way the kubelet's atomic writer does:
    a timestamped folder, a ``..data`` symlink swapped with rename(2), one symlink per key into
    ``..data``. Returns whether anything changed."""
    os.makedirs(directory, exist_ok=True)
    data_link = os.path.join(directory, "..data")
    current = os.path.join(directory, os.readlink(data_link)) if os.path.islink(data_link) else None
    if current and set(os.listdir(current)) == set(files) and all(
            read_bytes(os.path.join(current, name)) == content for name, content in files.items()):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = os.path.join(directory, stamp)
    os.mkdir(fresh, 0o755)
    for name, content in files.items():
        with open(os.path.join(fresh, name), "wb") as handle:
            handle.write(content)
    temporary = os.path.join(directory, "..data_tmp")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(stamp, temporary)
    os.rename(temporary, data_link)
    for name in files:
        link = os.path.join(directory, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)
    for name in os.listdir(directory):
        link = os.path.join(directory, name)
        if not name.startswith("..") and os.path.islink(link) and name not in files:
            os.unlink(link)
    if current:
        shutil.rmtree(current, ignore_errors=True)
    return True


def pod_conditions(scheduled: dict | None, started: bool, unready: list, since: dict) -> list:
    """The pod's conditions (``unready``: the names of containers not ready); ``since`` keeps each
    condition's last transition time."""
    ready = not unready
    wanted = {"PodReadyToStartContainers": started, "Initialized": True, "ContainersReady": ready, "Ready": ready}
    conditions = [scheduled] if scheduled else []
    for name, value in wanted.items():
        status = "True" if value else "False"
        if since.get(name, (None,))[0] != status:
            since[name] = (status, now())
        condition = {"type": name, "status": status, "lastProbeTime": None, "lastTransitionTime": since[name][1]}
        if not value and name in ("ContainersReady", "Ready"):
            condition["reason"] = "ContainersNotReady"
            condition["message"] = f"containers with unready status: [{' '.join(unready)}]"
        conditions.append(condition)
    return conditions


# ----------------------------------------------------------------------------------------------
# The API


class Api:
    def __init__(self, config: dict):
        url = urllib.parse.urlparse(config["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.context = ssl.create_default_context(cafile=config["ca"])
        self.context.load_cert_chain(config["cert"], config["key"])

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def call(self, method: str, path: str, body=None, content_type: str = "application/json"):
        connection = self.connection()
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError(response.status, text)
        return json.loads(text) if text else None

    def watch(self, path: str):
        """Yields watch events (type, object) until the server closes the stream."""
        connection = self.connection(timeout=330)
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, response.read().decode())
            while True:
                line = response.readline()
                if not line:
                    return
                event = json.loads(line)
                yield event["type"], event["object"]
        finally:
            connection.close()


# ----------------------------------------------------------------------------------------------
# Containers


def in_container(mounts: list, argv: list, scratch: str, netns: str | None = None,
                 workdir: str | None = None) -> list:
    """``argv`` as a privileged host-network container: in a mount namespace of its own, chrooted to a
    copy-on-write overlay of the node's root (writes land in a tmpfs and vanish with it) with the
    node's /proc, /sys and /dev, an empty /run, /tmp and /lib/modules, and ``mounts`` (source, target, read_only)
    bind-mounted: the image's directories and the pod's volumes. Nothing of it is visible on the
    node. unshare, sh and chroot exec in turn, so the container's PID is the one the runner started.
    ``netns``: run it in that network namespace (a node that is a network namespace of its host)."""
    root = f"{scratch}/root"
    steps = ["set -e", f"mount -t tmpfs -o mode=0755 container {shlex.quote(scratch)}",
             f"mkdir {shlex.quote(scratch)}/upper {shlex.quote(scratch)}/work {shlex.quote(root)}",
             f"mount -t overlay container -o lowerdir=/,upperdir={shlex.quote(scratch)}/upper,"
             f"workdir={shlex.quote(scratch)}/work {shlex.quote(root)}"]
    steps += [f"mount --rbind /{name} {shlex.quote(root)}/{name}" for name in ("proc", "sys", "dev")]
    steps += [f"mount -t tmpfs tmpfs {shlex.quote(root)}/{name}" for name in ("run", "tmp")]
    # An image carries no kernel modules: the node's show only where a volume mounts them, so a
    # `modprobe` in the container fails otherwise, as it does in kube-proxy's real image.
    modules = shlex.quote(root + os.path.realpath("/lib/modules"))
    steps.append(f"[ ! -d {modules} ] || mount -t tmpfs -o mode=0755 modules {modules}")
    for source, target, read_only in mounts:
        # The root is the node's own (overlaid), so its symlinks resolve as the node's do; resolved
        # here, an absolute one (Debian's /var/run -> /run) cannot lead the mount out of the root.
        inside = shlex.quote(root + os.path.realpath(target))
        steps.append(f"if [ -d {shlex.quote(source)} ]; then mkdir -p {inside}; "
                     f"else mkdir -p $(dirname {inside}); touch {inside}; fi")
        steps.append(f"mount --rbind {shlex.quote(source)} {inside}")
        if read_only:
            steps.append(f"mount -o remount,bind,ro {inside}")
    chdir = ["/usr/bin/env", f"--chdir={workdir}"] if workdir else []
    steps.append(f'exec chroot {shlex.quote(root)} {" ".join(chdir)} "$@"')
    command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "; ".join(steps),
               "container", *argv]
    return ["ip", "netns", "exec", netns, *command] if netns else command


class Container:
    def __init__(self, spec: dict):
        self.spec = spec
        self.name = spec["name"]
        self.process: subprocess.Popen | None = None
        self.started_at = None
        self.finished = None  # last termination: {exitCode, reason, startedAt, finishedAt}
        self.restarts = 0
        self.next_start = 0.0
        self.waiting = ("ContainerCreating", "")
        self.ready = False
        self.probe_due = {"readiness": 0.0, "liveness": 0.0}
        self.probe_streak = {"readiness": [0, 0], "liveness": [0, 0]}  # successes, failures
        self.image_id = ""
        self.pull_failures = 0
        self.serial = 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Pod:
    def __init__(self, obj: dict):
        self.obj = obj
        self.uid = obj["metadata"]["uid"]
        self.containers = {c["name"]: Container(c) for c in obj["spec"]["containers"]}
        self.volumes_at = 0.0
        self.since: dict = {}
        self.reported = None
        self.terminating_since = None
        self.error = None

    @property
    def key(self) -> str:
        return f"{self.obj['metadata']['namespace']}/{self.obj['metadata']['name']}"


class Runner:
    def __init__(self, config: dict):
        self.config = config
        self.node = config["node"]
        self.api = Api(config)
        self.state = config.get("state_dir", "/var/lib/kubeipvs-podrunner")
        self.node_ips = [a["address"] for a in config["addresses"] if a["type"] == "InternalIP"]
        self.pods: dict[str, Pod] = {}
        self.events: queue.Queue = queue.Queue()
        self.stopping = False
        self.node_refreshed = 0.0
        self.tokens: dict = {}
        self.recorded: dict = {}

    # ---- the Node

    def register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        labels.update(self.config.get("labels") or {})
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": labels},
                "spec": {}}
        if self.config.get("pod_cidrs"):
            node["spec"] = {"podCIDR": self.config["pod_cidrs"][0], "podCIDRs": self.config["pod_cidrs"]}
        try:
            self.api.call("POST", "/api/v1/nodes", node)
            log(f"registered Node {self.node}")
        except ApiError as error:
            if error.status != 409:
                raise
        self.refresh_node()

    def refresh_node(self) -> None:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        capacity = {"cpu": str(os.cpu_count()), "memory": f"{memory}Ki", "pods": "110", "ephemeral-storage": "1Gi"}
        stamp = now()
        status = {"status": {
            "addresses": self.config["addresses"],
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the lab's pod runner is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": self.config.get("ready_since", stamp)}],
            "nodeInfo": {
                "kubeletVersion": self.config.get("kubelet_version", ""),
                "kubeProxyVersion": "", "containerRuntimeVersion": "kubeipvs-podrunner://1",
                "operatingSystem": "linux", "architecture": "amd64", "kernelVersion": os.uname().release,
                "osImage": "Debian GNU/Linux 12 (bookworm)", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }}
        self.config.setdefault("ready_since", stamp)
        self.api.call("PATCH", f"/api/v1/nodes/{self.node}/status", status, "application/merge-patch+json")
        self.node_refreshed = time.monotonic()

    # ---- events

    def event(self, pod: Pod, kind: str, reason: str, message: str, container: str | None = None) -> None:
        meta = pod.obj["metadata"]
        involved = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
                    "apiVersion": "v1"}
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        stamp = now()
        # The same event again is one event counted twice, as client-go's recorder aggregates it.
        key = (meta["uid"], container, kind, reason, message)
        seen = self.recorded.get(key)
        try:
            if seen:
                seen["count"] += 1
                self.api.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/events/{seen['name']}",
                              {"count": seen["count"], "lastTimestamp": stamp}, "application/merge-patch+json")
                return
            body = {"apiVersion": "v1", "kind": "Event",
                    "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                    "involvedObject": involved, "reason": reason, "message": message, "type": kind,
                    "source": {"component": "kubelet", "host": self.node}, "firstTimestamp": stamp,
                    "lastTimestamp": stamp, "count": 1, "reportingComponent": "kubelet",
                    "reportingInstance": self.node}
            created = self.api.call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
            self.recorded[key] = {"name": created["metadata"]["name"], "count": 1}
        except (ApiError, OSError) as error:
            log(f"event {reason} for {pod.key} not recorded: {error}")

    # ---- images

    def pull(self, image: str) -> tuple[str, str]:
        """The image's root in the node's store and its ID; copies it from the image source once."""
        known = (self.config.get("images") or {}).get(image)
        if known is None:
            raise LookupError(f"image {image} is not in this node's image store "
                              f"(it has {', '.join(sorted(self.config.get('images') or {})) or 'none'})")
        digest = hashlib.sha256(json.dumps(known, sort_keys=True).encode()).hexdigest()[:16]
        root = os.path.join(self.state, "images", digest)
        stamp = os.path.join(root, ".image-id")
        if not os.path.exists(stamp):
            staging = root + ".partial"
            shutil.rmtree(staging, ignore_errors=True)
            content = hashlib.sha256()
            for target, source in sorted(known["files"].items()):
                path = os.path.join(staging, "rootfs", target.lstrip("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                shutil.copy2(source, path)
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        content.update(block)
            with open(os.path.join(staging, ".image-id"), "w") as handle:
                handle.write("sha256:" + content.hexdigest())
            shutil.rmtree(root, ignore_errors=True)
            os.rename(staging, root)
        with open(stamp) as handle:
            return os.path.join(root, "rootfs"), handle.read()

    # ---- volumes

    def pod_dir(self, pod: Pod) -> str:
        return os.path.join(self.state, "pods", pod.uid)

    def token(self, pod: Pod, source: dict) -> bytes:
        meta, spec = pod.obj["metadata"], pod.obj["spec"]
        key = (pod.uid, source.get("audience"), source.get("expirationSeconds"))
        cached = self.tokens.get(key)
        if cached and time.time() < cached[1]:
            return cached[0]
        expiration = int(source.get("expirationSeconds") or TOKEN_EXPIRATION)
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": expiration,
                            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                               "uid": meta["uid"]}}}
        if source.get("audience"):
            request["spec"]["audiences"] = [source["audience"]]
        answer = self.api.call(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/"
                    f"{spec.get('serviceAccountName') or 'default'}/token", request)
        token = answer["status"]["token"].encode()
        self.tokens[key] = (token, time.time() + expiration * 0.8)  # renewed at 80% of its life, as the kubelet
        return token

    def config_map(self, namespace: str, name: str) -> dict:
        return self.api.call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def secret(self, namespace: str, name: str) -> dict:
        return self.api.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    @staticmethod
    def project(data: dict, items: list | None, decode: bool = False) -> dict:
        def value(key):
            return base64.b64decode(data[key]) if decode else data[key].encode()
        if items:
            return {item["path"]: value(item["key"]) for item in items if item["key"] in data}
        return {key: value(key) for key in data}

    def volume_files(self, pod: Pod, volume: dict) -> dict | None:
        """The files of a configMap, secret or projected volume; None for other kinds."""
        namespace = pod.obj["metadata"]["namespace"]
        if "configMap" in volume:
            source = volume["configMap"]
            return self.project(self.config_map(namespace, source["name"]).get("data") or {}, source.get("items"))
        if "secret" in volume:
            source = volume["secret"]
            return self.project(self.secret(namespace, source["secretName"]).get("data") or {},
                                source.get("items"), decode=True)
        if "projected" in volume:
            files = {}
            for source in volume["projected"]["sources"]:
                if "serviceAccountToken" in source:
                    files[source["serviceAccountToken"]["path"]] = self.token(pod, source["serviceAccountToken"])
                elif "configMap" in source:
                    data = self.config_map(namespace, source["configMap"]["name"]).get("data") or {}
                    files.update(self.project(data, source["configMap"].get("items")))
                elif "secret" in source:
                    data = self.secret(namespace, source["secret"]["name"]).get("data") or {}
                    files.update(self.project(data, source["secret"].get("items"), decode=True))
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"]["items"]:
                        files[item["path"]] = field_value(pod.obj, item["fieldRef"]["fieldPath"],
                                                          self.node_ips).encode()
                else:
                    raise ValueError(f"projected source {sorted(source)} is not supported")
            return files
        return None

    def host_path(self, path: str) -> str:
        """Where a hostPath is on this node: the node's own root, or a folder of its own for a node
        that is a network namespace of its host (``host_root``)."""
        root = self.config.get("host_root")
        return os.path.join(root, path.lstrip("/")) if root else path

    def prepare_volumes(self, pod: Pod) -> dict:
        """Volume name -> path on the node."""
        paths = {}
        for volume in pod.obj["spec"].get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                path, kind = self.host_path(volume["hostPath"]["path"]), volume["hostPath"].get("type", "")
                if kind == "FileOrCreate" and not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "a").close()
                elif kind in ("DirectoryOrCreate", "") and not os.path.exists(path):
                    os.makedirs(path)  # the container runtime creates a missing unchecked path as a folder
                if kind in ("File", "FileOrCreate") and not os.path.isfile(path):
                    raise ValueError(f"hostPath type check failed: {path} is not a file")
                if kind in ("Directory", "DirectoryOrCreate") and not os.path.isdir(path):
                    raise ValueError(f"hostPath type check failed: {path} is not a directory")
                paths[name] = path
                continue
            path = os.path.join(self.pod_dir(pod), "volumes", name)
            if "emptyDir" in volume:
                os.makedirs(path, exist_ok=True)
            else:
                files = self.volume_files(pod, volume)
                if files is None:
                    raise ValueError(f"volume {name}: kind {sorted(set(volume) - {'name'})} is not supported")
                atomic_write(path, files)
            paths[name] = path
        pod.volumes_at = time.monotonic()
        return paths

    def refresh_volumes(self, pod: Pod) -> None:
        for volume in pod.obj["spec"].get("volumes") or []:
            files = None if "hostPath" in volume or "emptyDir" in volume else self.volume_files(pod, volume)
            if files is not None:
                atomic_write(os.path.join(self.pod_dir(pod), "volumes", volume["name"]), files)
        pod.volumes_at = time.monotonic()

    # ---- running containers

    def service_env(self) -> dict:
        try:
            service = self.api.call("GET", "/api/v1/namespaces/default/services/kubernetes")
        except (ApiError, OSError):
            return {}
        host, port = service["spec"]["clusterIP"], str(service["spec"]["ports"][0]["port"])
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp", f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": host}

    def start_container(self, pod: Pod, container: Container) -> None:
        spec = container.spec
        if not pod.obj["spec"].get("hostNetwork"):
            raise ValueError("only hostNetwork pods run here (the lab's nodes have no pod sandbox)")
        try:
            rootfs, image_id = self.pull(spec["image"])
        except (LookupError, OSError) as error:
            # ErrImagePull on the first failure, ImagePullBackOff while waiting to try again
            container.pull_failures += 1
            container.waiting = ("ErrImagePull" if container.pull_failures == 1 else "ImagePullBackOff", str(error))
            container.next_start = time.monotonic() + backoff(container.pull_failures)
            self.event(pod, "Warning", "Failed", f"Failed to pull image \"{spec['image']}\": {error}", container.name)
            self.event(pod, "Normal", "BackOff", f"Back-off pulling image \"{spec['image']}\"", container.name)
            return
        container.pull_failures = 0
        if not container.image_id:
            self.event(pod, "Normal", "Pulled", f"Container image \"{spec['image']}\" already present on machine",
                       container.name)
        container.image_id = image_id
        volumes = self.prepare_volumes(pod)
        mounts = []
        for top in sorted(os.listdir(rootfs)):
            for directory, subdirs, files in os.walk(os.path.join(rootfs, top)):
                if files:  # the image's directories that hold files replace the node's
                    mounts.append((directory, "/" + os.path.relpath(directory, rootfs), True))
                    subdirs.clear()
        for mount in spec.get("volumeMounts") or []:
            source = volumes[mount["name"]]
            if mount.get("subPath"):
                source = os.path.join(source, mount["subPath"])
            mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        env = container_env(pod.obj, spec, self.node_ips, self.service_env())
        argv = container_argv(spec, env)
        container.serial += 1
        meta = pod.obj["metadata"]
        logs = os.path.join(self.config.get("log_dir", "/var/log/pods"),
                            f"{meta['namespace']}_{meta['name']}_{pod.uid}", container.name)
        os.makedirs(logs, exist_ok=True)
        with open(os.path.join(logs, f"{container.restarts}.log"), "ab") as output:
            scratch = os.path.join(self.pod_dir(pod), "containers", f"{container.name}-{container.serial}")
            os.makedirs(scratch, exist_ok=True)
            container.process = subprocess.Popen(
                in_container(mounts, argv, scratch, self.config.get("netns"), spec.get("workingDir")), env=env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
        container.started_at = now()
        container.waiting = None
        container.ready = False
        container.probe_streak = {"readiness": [0, 0], "liveness": [0, 0]}
        delay = (spec.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
        container.probe_due = {"readiness": time.monotonic() + delay,
                               "liveness": time.monotonic() + (spec.get("livenessProbe") or {}).get(
                                   "initialDelaySeconds", 0)}
        self.event(pod, "Normal", "Created", f"Created container: {container.name}", container.name)
        self.event(pod, "Normal", "Started", f"Started container {container.name}", container.name)
        log(f"{pod.key}: started {container.name} (pid {container.process.pid}): {' '.join(argv)}")

    def stop_container(self, container: Container, grace: float) -> None:
        process = container.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=max(grace, 0))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def probe(self, pod: Pod, container: Container, spec: dict) -> bool:
        timeout = spec.get("timeoutSeconds", 1)
        host = self.node_ips[0] if self.node_ips else "127.0.0.1"

        def port_of(value):
            if isinstance(value, int) or str(value).isdigit():
                return int(value)
            for port in container.spec.get("ports") or []:
                if port.get("name") == value:
                    return port["containerPort"]
            raise ValueError(f"no container port named {value}")

        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                connection_class = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" else \
                    http.client.HTTPConnection
                kwargs = {"context": ssl._create_unverified_context()} if get.get("scheme") == "HTTPS" else {}
                connection = connection_class(get.get("host") or host, port_of(get["port"]), timeout=timeout, **kwargs)
                try:
                    connection.request("GET", get.get("path", "/"),
                                       headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
                    status = connection.getresponse().status
                finally:
                    connection.close()
                return 200 <= status < 400
            if "tcpSocket" in spec:
                with socket.create_connection((spec["tcpSocket"].get("host") or host,
                                               port_of(spec["tcpSocket"]["port"])), timeout=timeout):
                    return True
            if "exec" in spec:
                return subprocess.run(spec["exec"]["command"], timeout=timeout, capture_output=True,
                                      check=False).returncode == 0
        except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
            return False
        return True

    def run_probes(self, pod: Pod, container: Container) -> None:
        for kind in ("readiness", "liveness"):
            spec = container.spec.get(f"{kind}Probe")
            if not spec:
                if kind == "readiness":
                    container.ready = True
                continue
            if time.monotonic() < container.probe_due[kind]:
                continue
            container.probe_due[kind] = time.monotonic() + spec.get("periodSeconds", 10)
            streak = container.probe_streak[kind]
            if self.probe(pod, container, spec):
                streak[0], streak[1] = streak[0] + 1, 0
                if kind == "readiness" and streak[0] >= spec.get("successThreshold", 1):
                    container.ready = True
            else:
                streak[0], streak[1] = 0, streak[1] + 1
                self.event(pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed", container.name)
                if streak[1] >= spec.get("failureThreshold", 3):
                    if kind == "readiness":
                        container.ready = False
                    else:
                        self.event(pod, "Normal", "Killing", f"Container {container.name} failed liveness probe, "
                                   "will be restarted", container.name)
                        self.stop_container(container, pod.obj["spec"].get("terminationGracePeriodSeconds", 30))

    # ---- the sync loop

    def sync_pod(self, pod: Pod) -> None:
        if pod.obj["metadata"].get("deletionTimestamp"):
            self.terminate(pod)
            return
        if pod.error:
            return
        if time.monotonic() - pod.volumes_at > VOLUME_REFRESH and any(c.running() for c in pod.containers.values()):
            try:
                self.refresh_volumes(pod)
            except (ApiError, OSError) as error:
                log(f"{pod.key}: volumes not refreshed: {error}")
        for container in pod.containers.values():
            if container.running():
                self.run_probes(pod, container)
                continue
            process = container.process
            if process is not None:  # it exited
                code = process.returncode
                container.finished = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                      "startedAt": container.started_at, "finishedAt": now(),
                                      "containerID": f"podrunner://{pod.uid}-{container.name}-{container.serial}"}
                container.process = None
                container.ready = False
                container.restarts += 1
                container.next_start = time.monotonic() + backoff(container.restarts)
                container.waiting = ("CrashLoopBackOff",
                                     f"back-off {backoff(container.restarts):.0f}s restarting failed container="
                                     f"{container.name} pod={pod.obj['metadata']['name']}")
                self.event(pod, "Warning", "BackOff", "Back-off restarting failed container "
                           f"{container.name} in pod {pod.obj['metadata']['name']}", container.name)
                log(f"{pod.key}: {container.name} exited with {code}; restart in {backoff(container.restarts):.0f}s")
                continue
            if time.monotonic() >= container.next_start:
                try:
                    self.start_container(pod, container)
                except (ApiError, OSError, ValueError, KeyError) as error:
                    container.waiting = ("CreateContainerError", str(error))
                    container.next_start = time.monotonic() + backoff(container.restarts + 1)
                    self.event(pod, "Warning", "Failed", f"Error: {error}", container.name)
                    log(f"{pod.key}: {container.name} not started: {error}")
        self.report(pod)

    def terminate(self, pod: Pod) -> None:
        grace = pod.obj["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod.obj["spec"].get("terminationGracePeriodSeconds", 30)
        for container in pod.containers.values():
            if container.running():
                self.event(pod, "Normal", "Killing", f"Stopping container {container.name}", container.name)
                self.stop_container(container, grace)
        meta = pod.obj["metadata"]
        try:
            self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                          {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                           "preconditions": {"uid": pod.uid}})
        except ApiError as error:
            if error.status not in (404, 409):
                log(f"{pod.key}: not deleted: {error}")
                return
        log(f"{pod.key}: stopped and deleted")
        self.forget(pod)

    def forget(self, pod: Pod) -> None:
        for container in pod.containers.values():
            self.stop_container(container, 0)
        self.pods.pop(pod.uid, None)
        shutil.rmtree(self.pod_dir(pod), ignore_errors=True)
        self.tokens = {key: value for key, value in self.tokens.items() if key[0] != pod.uid}
        self.recorded = {key: value for key, value in self.recorded.items() if key[0] != pod.uid}

    def report(self, pod: Pod) -> None:
        statuses, unready, any_started = [], [], False
        for container in pod.containers.values():
            status = {"name": container.name, "image": container.spec["image"], "imageID": container.image_id,
                      "ready": container.ready, "restartCount": container.restarts,
                      "started": container.running(), "lastState": {}}
            if container.running():
                any_started = True
                status["containerID"] = f"podrunner://{pod.uid}-{container.name}-{container.serial}"
                status["state"] = {"running": {"startedAt": container.started_at}}
            else:
                reason, message = container.waiting or ("ContainerCreating", "")
                status["state"] = {"waiting": {"reason": reason, "message": message}}
            if container.finished:
                status["lastState"] = {"terminated": container.finished}
            if not (container.ready and container.running()):
                unready.append(container.name)
            statuses.append(status)
        scheduled = next((c for c in pod.obj.get("status", {}).get("conditions") or []
                          if c.get("type") == "PodScheduled"), None)
        ips = [{"ip": ip} for ip in self.node_ips]
        status = {"phase": "Running" if any_started or any(c.restarts for c in pod.containers.values())
                  else "Pending",
                  "conditions": pod_conditions(scheduled, any_started, unready, pod.since),
                  "hostIP": self.node_ips[0] if self.node_ips else None, "hostIPs": ips,
                  "podIP": self.node_ips[0] if self.node_ips else None, "podIPs": ips,
                  "startTime": pod.obj.get("status", {}).get("startTime") or now(),
                  "containerStatuses": statuses}
        comparable = json.dumps(status, sort_keys=True)
        if comparable == pod.reported:
            return
        meta = pod.obj["metadata"]
        try:
            answer = self.api.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                   {"status": status}, "application/merge-patch+json")
            pod.obj["status"] = answer.get("status", status)
            pod.reported = comparable
        except ApiError as error:
            log(f"{pod.key}: status not reported: {error}")

    # ---- the watch

    def watch_pods(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        while not self.stopping:
            try:
                listing = self.api.call("GET", f"/api/v1/pods?fieldSelector={selector}")
                self.events.put(("SYNC", listing["items"]))
                version = listing["metadata"]["resourceVersion"]
                path = (f"/api/v1/pods?fieldSelector={selector}&watch=1&allowWatchBookmarks=true"
                        f"&timeoutSeconds=300&resourceVersion={version}")
                for kind, obj in self.api.watch(path):
                    if kind == "ERROR":
                        break
                    if kind != "BOOKMARK":
                        self.events.put((kind, obj))
            except (ApiError, OSError, ValueError, http.client.HTTPException) as error:
                log(f"watch: {error}; again in 2s")
                time.sleep(2)

    def apply(self, kind: str, obj) -> None:
        if kind == "SYNC":
            uids = {item["metadata"]["uid"] for item in obj}
            for pod in list(self.pods.values()):
                if pod.uid not in uids:
                    self.forget(pod)
            for item in obj:
                self.apply("MODIFIED", item)
            return
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            if uid in self.pods:
                self.forget(self.pods[uid])
            return
        if uid in self.pods:
            self.pods[uid].obj = obj
        else:
            self.pods[uid] = Pod(obj)
            log(f"{self.pods[uid].key}: bound to this node")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.shutdown())
        while True:
            try:
                self.register()
                break
            except (ApiError, OSError) as error:
                log(f"register: {error}; again in 3s")
                time.sleep(3)
        threading.Thread(target=self.watch_pods, daemon=True).start()
        while not self.stopping:
            try:
                kind, obj = self.events.get(timeout=1)
                self.apply(kind, obj)
                while not self.events.empty():
                    self.apply(*self.events.get_nowait())
            except queue.Empty:
                pass
            for pod in list(self.pods.values()):
                self.sync_pod(pod)
            if time.monotonic() - self.node_refreshed > NODE_REFRESH:
                try:
                    self.refresh_node()
                except (ApiError, OSError) as error:
                    log(f"node status: {error}")

    def shutdown(self) -> None:
        self.stopping = True
        for pod in list(self.pods.values()):
            for container in pod.containers.values():
                self.stop_container(container, 5)
        sys.exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="/etc/kubeipvs-podrunner/config.json")
    args = parser.parse_args()
    with open(args.config) as handle:
        config = json.load(handle)
    Runner(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
