"""The lab's Kubernetes: real binaries built from the published Go modules, a control plane on the controller.

Commands:
  build [--version V]   build kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and etcd
                        (CGO_ENABLED=0) into ~/.cache/kubeipvs-lab/k8s/v<V>/ unless they are there already;
                        without --version, then kube-proxy alone of every OLDER_KUBE_PROXIES version
  join [NODE...]        make the running lab VMs Nodes: each gets its client certificate and the pod
                        runner (podrunner.py) as a systemd service, which registers the Node
  apply FILE | delete FILE
                        server-side apply (or delete) the Services, EndpointSlices, ConfigMaps and
                        Namespaces of a YAML file as the lab's administrator
  up                    start etcd, kube-apiserver, kube-controller-manager and kube-scheduler on the
                        controller (certificates generated locally), write the admin kubeconfig
  down                  stop them by the PIDs they were started with
  status                which of them run, and where the API answers

Environment:
  KUBEIPVS_K8S_VERSION  Kubernetes version to build and run (default: KUBERNETES_VERSION below)
  KUBEIPVS_LAB_CACHE    where the binaries are cached (default ~/.cache/kubeipvs-lab)
  KUBEIPVS_LAB_STATE    per-run state; the cluster's lives in its k8s/ folder (default <repo>/.lab)

The lab VMs reach the API server at 10.0.2.2 (QEMU's user-mode network maps it to the controller's
loopback), so it listens on 127.0.0.1 and advertises 10.0.2.2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab

KUBERNETES_VERSION = "1.37.2"
ETCD_VERSION = "3.6.16"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
# Older kube-proxies the lab builds too, to prove the renderers against every version a cluster on
# this control plane may run: kube-proxy may be up to three minor releases older than the API server.
OLDER_KUBE_PROXIES = ("1.34.4", "1.35.4", "1.36.3")
# How the lab reaches the API server from the VMs, and the cluster's address plan.
ADVERTISE_ADDRESS = "10.0.2.2"
SERVICE_CIDRS = ("10.96.0.0/12", "fd00:10:96::/112")
CLUSTER_CIDRS = ("10.244.0.0/16", "fd00:10:244::/56")
# kube-controller-manager runs the controllers the lab's tests need, and no others.
CONTROLLERS = (
    "daemonset-controller", "endpointslice-controller", "endpointslice-mirroring-controller",
    "serviceaccount-controller", "serviceaccount-token-controller", "garbage-collector-controller",
    "root-ca-certificate-publisher-controller", "namespace-controller", "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller", "service-cidr-controller",
)
# Static tokens for tests that need a user without certificates: an administrator and a reader.
TOKENS = {"admin": ("lab-admin", "system:masters"), "reader": ("lab-reader", "")}
START_TIMEOUT = float(os.environ.get("KUBEIPVS_K8S_START_TIMEOUT", "180"))

log = lab.log
LabError = lab.LabError


def host(address: str) -> str:
    """An address as the host part of a URL."""
    return f"[{address}]" if ":" in address else address


def version() -> str:
    return os.environ.get("KUBEIPVS_K8S_VERSION", KUBERNETES_VERSION).lstrip("v")


# --------------------------------------------------------------------------------------------
# Building the binaries


def go_env() -> dict:
    """The machine's Go, as configured (module proxy, checksum database), never another toolchain."""
    if not shutil.which("go"):
        raise LabError("go is missing: the lab builds Kubernetes from its Go modules (see README)")
    return dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")


def run_go(args: list[str], cwd: Path) -> str:
    result = subprocess.run(["go", *args], cwd=cwd, env=go_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"go {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The k8s.io modules k8s.io/kubernetes keeps in its staging tree (its go.mod replaces them with
    ./staging paths; outside that repository they are published modules of their own)."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[a-z0-9-]+)\s+=>\s+\./staging/", kubernetes_gomod, re.MULTILINE)))


def build_module(kubernetes: str, kubernetes_gomod: str) -> str:
    """go.mod of a module that builds k8s.io/kubernetes' commands at ``kubernetes`` (1.N.P), with
    every staging module pinned to its published twin v0.N.P."""
    go_directive = re.search(r"^go\s+(\S+)", kubernetes_gomod, re.MULTILINE).group(1)
    staging = "v0." + kubernetes.split(".", 1)[1]
    lines = ["module kubeipvs.lab/k8s", "", f"go {go_directive}", "", f"require k8s.io/kubernetes v{kubernetes}",
             "", "replace ("]
    lines += [f"\t{name} => {name} {staging}" for name in staging_modules(kubernetes_gomod)]
    lines += [")", ""]
    return "\n".join(lines)


def ldflags(kubernetes: str) -> str:
    major, minor = kubernetes.split(".")[:2]
    variables = {
        "k8s.io/component-base/version.gitVersion": f"v{kubernetes}",
        "k8s.io/component-base/version.gitMajor": major,
        "k8s.io/component-base/version.gitMinor": minor,
        "k8s.io/component-base/version.gitTreeState": "clean",
        "k8s.io/client-go/pkg/version.gitVersion": f"v{kubernetes}",
        "k8s.io/client-go/pkg/version.gitMajor": major,
        "k8s.io/client-go/pkg/version.gitMinor": minor,
    }
    return " ".join(["-s", "-w", *(f"-X {name}={value}" for name, value in variables.items())])


def binaries_dir(kubernetes: str | None = None) -> Path:
    return lab.cache_dir() / "k8s" / f"v{kubernetes or version()}"


def recipe_digest(kubernetes: str, components: tuple[str, ...] = COMPONENTS, etcd: bool = True) -> str:
    """What the cached binaries were built from: a change to any of it rebuilds them."""
    recipe = json.dumps([kubernetes, ETCD_VERSION if etcd else None, components, ldflags(kubernetes)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def release_key(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("."))


def kube_proxy_versions() -> tuple[str, ...]:
    """Every kube-proxy version the lab proves: the cluster's own, then those of OLDER_KUBE_PROXIES
    older than it (newest first; a kube-proxy newer than the API server is not supported)."""
    older = (release for release in OLDER_KUBE_PROXIES if release_key(release) < release_key(version()))
    return (version(), *sorted(older, key=release_key, reverse=True))


def build_all() -> list[Path]:
    """The cluster's programs, then each older kube-proxy alone."""
    return [build(), *(build(older, components=("kube-proxy",), etcd=False) for older in kube_proxy_versions()[1:])]


def build(kubernetes: str | None = None, components: tuple[str, ...] = COMPONENTS, etcd: bool = True) -> Path:
    """``components`` of Kubernetes ``kubernetes`` (and etcd) into binaries_dir(kubernetes), unless
    the same recipe is built there already."""
    kubernetes = kubernetes or version()
    target = binaries_dir(kubernetes)
    stamp = target / ".recipe"
    with lab.locked(lab.cache_dir() / "k8s-build.lock"):
        if stamp.exists() and stamp.read_text() == recipe_digest(kubernetes, components, etcd):
            return target
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.monotonic()
        log(f"building Kubernetes v{kubernetes} ({', '.join(components)})"
            f"{f' and etcd v{ETCD_VERSION}' if etcd else ''} from their Go modules; "
            "a few minutes per program on two cores the first time, cached afterwards")
        with tempfile.TemporaryDirectory(prefix="kubeipvs-k8s-build-") as work:
            work = Path(work)
            info = json.loads(run_go(["mod", "download", "-json", f"k8s.io/kubernetes@v{kubernetes}"], work))
            if info.get("Error"):
                raise LabError(f"k8s.io/kubernetes@v{kubernetes}: {info['Error']}")
            kube_src = work / "kubernetes"
            kube_src.mkdir()
            (kube_src / "go.mod").write_text(build_module(kubernetes, Path(info["GoMod"]).read_text()))
            for component in components:
                run_go(["get", "-tool", f"k8s.io/kubernetes/cmd/{component}@v{kubernetes}"], kube_src)
            for component in components:
                step = time.monotonic()
                run_go(["build", "-trimpath", "-ldflags", ldflags(kubernetes), "-o", str(staging / component),
                        f"k8s.io/kubernetes/cmd/{component}"], kube_src)
                log(f"  {component} v{kubernetes}: {time.monotonic() - step:.0f}s")
            if etcd:
                etcd_src = work / "etcd"
                etcd_src.mkdir()
                (etcd_src / "go.mod").write_text("module kubeipvs.lab/etcd\n\ngo 1.24\n")
                run_go(["get", "-tool", f"go.etcd.io/etcd/server/v3@v{ETCD_VERSION}"], etcd_src)
                step = time.monotonic()
                run_go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "etcd"),
                        "go.etcd.io/etcd/server/v3"], etcd_src)
                log(f"  etcd v{ETCD_VERSION}: {time.monotonic() - step:.0f}s")
        versions = {"kubernetes": f"v{kubernetes}", **({"etcd": f"v{ETCD_VERSION}"} if etcd else {})}
        (staging / "versions.json").write_text(json.dumps(versions))
        (staging / ".recipe").write_text(recipe_digest(kubernetes, components, etcd))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        log(f"Kubernetes v{kubernetes} built in {time.monotonic() - started:.0f}s: {target}")
    return target


# --------------------------------------------------------------------------------------------
# Certificates


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def issue_certificate(pki: Path, name: str, subject: str, usage: str, alt_names: tuple[str, ...] = ()) -> None:
    """``name``.crt/.key signed by the lab's CA (EC P-256: quick to make, accepted everywhere here)."""
    if (pki / f"{name}.crt").exists():
        return
    openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki)
    extensions = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if alt_names:
        extensions.append("subjectAltName=" + ",".join(alt_names))
    (pki / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "3650", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def node_certificate(pki: Path, node: str) -> tuple[Path, Path]:
    """A kubelet's client identity for ``node`` (the Node authorizer and NodeRestriction apply to it)."""
    issue_certificate(pki, f"node-{node}", f"/O=system:nodes/CN=system:node:{node}", "clientAuth")
    return pki / f"node-{node}.crt", pki / f"node-{node}.key"


def make_pki(pki: Path, addresses: tuple[str, ...]) -> None:
    """The lab's CA and certificates; the API server's names every address it is reached at."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=kubeipvs-lab-ca", cwd=pki)
    names = ("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local", "IP:10.96.0.1", "IP:fd00:10:96::1",
             *(f"IP:{address}" for address in sorted(set(addresses))))
    if not (pki / "apiserver.names").exists() or (pki / "apiserver.names").read_text() != ",".join(names):
        (pki / "apiserver.crt").unlink(missing_ok=True)
        issue_certificate(pki, "apiserver", "/CN=kube-apiserver", "serverAuth", names)
        (pki / "apiserver.names").write_text(",".join(names))
    issue_certificate(pki, "admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth")
    issue_certificate(pki, "controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
    issue_certificate(pki, "scheduler", "/CN=system:kube-scheduler", "clientAuth")
    if not (pki / "sa.key").exists():
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=pki)
        openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    tokens = "".join(f"{token},{user},{user}{',' + group if group else ''}\n" for user, (token, group) in
                     TOKENS.items())
    (pki / "tokens.csv").write_text(tokens)


def kubeconfig(server: str, pki: Path, name: str) -> dict:
    """A kubeconfig with the CA and ``name``'s certificate inline (JSON is YAML too)."""
    import base64

    def inline(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab",
                      "cluster": {"server": server, "certificate-authority-data": inline(pki / "ca.crt")}}],
        "users": [{"name": name, "user": {"client-certificate-data": inline(pki / f"{name}.crt"),
                                          "client-key-data": inline(pki / f"{name}.key")}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": name}}],
    }


# --------------------------------------------------------------------------------------------
# The control plane


# Every request of the lab's administrators and test users, as the API server saw it (the
# components' own requests are left out): tests read it to prove what a module wrote, or that it
# wrote nothing, and that check mode sent only dry runs.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": ["kubernetes-admin", *(user for user in TOKENS)]}, {"level": "None"}],
}


# Where the kinds the lab applies live in the API: (API path prefix, plural, namespaced).
KINDS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
}


def object_path(obj: dict) -> str:
    if obj.get("kind") not in KINDS:
        raise LabError(f"the lab applies only {', '.join(KINDS)}, not {obj.get('kind')}")
    prefix, plural, namespaced = KINDS[obj["kind"]]
    meta = obj["metadata"]
    where = f"/namespaces/{meta.get('namespace', 'default')}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{meta['name']}"


def load_objects(path: Path) -> list[dict]:
    import yaml  # the lab's Python (the project's virtual environment) has it

    return [obj for document in yaml.safe_load_all(path.read_text()) if document
            for obj in (document if isinstance(document, list) else [document])]


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler of one lab, under ``root``
    (``<state>/k8s``): certificates, data, logs, PID files, the audit log and ``cluster.json``
    (addresses, ports, version). The API server listens on ``bind_address`` and tells the cluster
    (the ``kubernetes`` Service) it is at ``advertise_address``."""

    def __init__(self, root: Path | None = None, kubernetes: str | None = None, bind_address: str = "127.0.0.1",
                 advertise_address: str = ADVERTISE_ADDRESS):
        self.root = (root or lab.state_dir() / "k8s").resolve()
        self.pki = self.root / "pki"
        self.kubernetes = kubernetes or version()
        self.bind_address = bind_address
        self.advertise_address = advertise_address

    # ---- what runs

    def pid(self, component: str) -> int | None:
        """The PID of ``component`` if it still runs: recorded at start, and checked by its command
        line naming this lab's folder, so a stale PID file never hits another process."""
        try:
            pid = int((self.root / f"{component}.pid").read_text())
            for attempt in range(50):
                # A Go program just started can show an empty command line for a moment (its memory
                # map is busy): that is not an exit, so look again.
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if cmdline or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.01)
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.root).encode() in cmdline else None

    @property
    def info(self) -> dict:
        return json.loads((self.root / "cluster.json").read_text())

    @property
    def server(self) -> str:
        """The API server's address from the controller."""
        return f"https://{host(self.info['bind_address'])}:{self.info['apiserver_port']}"

    @property
    def node_server(self) -> str:
        """The API server's address from the nodes."""
        return f"https://{host(self.info['advertise_address'])}:{self.info['apiserver_port']}"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def running(self) -> bool:
        return all(self.pid(component) for component in ("etcd", "kube-apiserver"))

    # ---- start and stop

    def start(self, component: str, argv: list[str]) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{component}.log", "ab") as output:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                       start_new_session=True, cwd=self.root)
        (self.root / f"{component}.pid").write_text(str(process.pid))

    def up(self) -> ControlPlane:
        if self.running():
            self.wait_ready()
            return self
        binaries = build(self.kubernetes)
        self.root.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki, ("127.0.0.1", self.bind_address, self.advertise_address))
        names = ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler")
        ports = {name: lab.free_port() for name in names}
        info = {"kubernetes": f"v{self.kubernetes}", "apiserver_port": ports["apiserver"],
                "bind_address": self.bind_address, "advertise_address": self.advertise_address,
                "etcd_port": ports["etcd"], "service_cidrs": list(SERVICE_CIDRS),
                "cluster_cidrs": list(CLUSTER_CIDRS), "binaries": str(binaries),
                # every kube-proxy the nodes' image store holds, the cluster's own first
                "kube_proxies": [f"v{release}" for release in kube_proxy_versions()]}
        server = f"https://{host(self.bind_address)}:{ports['apiserver']}"
        # What playbooks need to reach this cluster, from the controller and from the nodes.
        info.update(server=server, node_server=f"https://{host(self.advertise_address)}:{ports['apiserver']}",
                    kubeconfig=str(self.admin_kubeconfig))
        (self.root / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")
        for name in ("admin", "controller-manager", "scheduler"):
            (self.root / f"{name}.kubeconfig").write_text(json.dumps(kubeconfig(server, self.pki, name), indent=2))
        self.admin_kubeconfig.chmod(0o600)
        (self.root / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
        self.audit_log.unlink(missing_ok=True)
        started = time.monotonic()
        etcd_data = self.root / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)
        etcd_client = f"http://127.0.0.1:{ports['etcd']}"
        etcd_peer = f"http://127.0.0.1:{ports['etcd_peer']}"
        self.start("etcd", [
            str(binaries / "etcd"), "--name=lab", f"--data-dir={etcd_data}",
            f"--listen-client-urls={etcd_client}", f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}", f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=lab={etcd_peer}", "--unsafe-no-fsync", "--log-level=warn",
            "--quota-backend-bytes=8589934592",
        ])
        pki = self.pki
        self.start("kube-apiserver", [
            str(binaries / "kube-apiserver"), f"--etcd-servers={etcd_client}",
            f"--bind-address={self.bind_address}", f"--secure-port={ports['apiserver']}",
            f"--advertise-address={self.advertise_address}",
            f"--service-cluster-ip-range={','.join(SERVICE_CIDRS)}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--event-ttl=1h",
            f"--audit-policy-file={self.root / 'audit-policy.json'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
        ])
        self.start("kube-controller-manager", [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={self.root / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}",
            f"--controllers={','.join(CONTROLLERS)}", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false", "--profiling=false",
        ])
        self.start("kube-scheduler", [
            str(binaries / "kube-scheduler"), f"--kubeconfig={self.root / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", "--leader-elect=false",
            "--profiling=false",
        ])
        self.wait_ready()
        log(f"control plane v{self.kubernetes} ready in {time.monotonic() - started:.0f}s at {server} "
            f"(VMs: {self.node_server}); admin kubeconfig {self.admin_kubeconfig}")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def request(self, path: str, method: str = "GET", body: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict | str]:
        """One request as the lab's administrator; (status, decoded body)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def apply(self, objects: list[dict]) -> None:
        """Server-side apply of ``objects`` as the lab's administrator (field manager kubeipvs-lab);
        a ``status`` given (a LoadBalancer's ingress IPs, as its controller would write them) is
        applied to the status subresource after the object."""
        for obj in objects:
            paths = [object_path(obj)] + ([object_path(obj) + "/status"] if obj.get("status") else [])
            for path in paths:
                status, body = self.request(path + "?fieldManager=kubeipvs-lab&force=true", "PATCH", obj,
                                            "application/apply-patch+yaml")
                if status >= 300:
                    raise LabError(f"applying {obj['kind']} {obj['metadata'].get('namespace', '')}/"
                                   f"{obj['metadata']['name']} ({path}) failed ({status}): {body}")

    def delete(self, objects: list[dict]) -> None:
        for obj in objects:
            status, body = self.request(object_path(obj), "DELETE")
            if status >= 300 and status != 404:
                raise LabError(f"deleting {obj['kind']} {obj['metadata']['name']} failed ({status}): {body}")

    def wait_ready(self) -> None:
        """Until the API server's /readyz passes and the default namespace and ServiceCIDR exist."""
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
                if not self.pid(component):
                    raise LabError(f"{component} exited; its log:\n{self.log_tail(component)}")
            try:
                status, body = self.request("/readyz")
                if status == 200:
                    status, body = self.request("/api/v1/namespaces/default/serviceaccounts/default")
                    if status == 200:
                        return
                last = f"{status} {str(body)[-300:]}"
            except (OSError, ssl.SSLError) as error:
                last = str(error)
            time.sleep(0.5)
        raise LabError(f"the API server is not ready after {START_TIMEOUT:.0f}s ({last}); "
                       f"its log:\n{self.log_tail('kube-apiserver')}")

    def log_tail(self, component: str, lines: int = 30) -> str:
        try:
            text = (self.root / "logs" / f"{component}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def down(self) -> int:
        stopped = 0
        for component in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = self.pid(component)
            if pid:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while self.pid(component) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self.pid(component):
                    os.kill(pid, signal.SIGKILL)
                stopped += 1
            (self.root / f"{component}.pid").unlink(missing_ok=True)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        return stopped

    def status(self) -> str:
        lines = []
        for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            pid = self.pid(component)
            lines.append(f"{component}\t{'running pid ' + str(pid) if pid else 'stopped'}")
        if self.running():
            lines.append(f"api\t{self.server} (VMs: {self.node_server}); kubeconfig {self.admin_kubeconfig}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Nodes: every lab VM joins as a Node; the pod runner (podrunner.py) runs its pods

RUNNER = Path(__file__).resolve().parent / "podrunner.py"
NODE_IMAGES = "/var/lib/kubeipvs-lab/k8s"  # the controller's binary cache, shared read-only (lab.py boot)
RUNNER_UNIT = """[Unit]
Description=kubeipvs lab pod runner (runs this node's host-network pods, as a kubelet would)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/kubeipvs-podrunner/podrunner.py --config /etc/kubeipvs-podrunner/config.json
Restart=always
RestartSec=2
KillMode=control-group

[Install]
WantedBy=multi-user.target
"""
IMAGE_MOUNT = (f"kubeipvs-k8s {NODE_IMAGES} 9p trans=virtio,version=9p2000.L,ro,msize=512000,nofail,"
               "x-systemd.automount 0 0\n")
# What a CNI plugin would do on a real node: forward between the pod bridge and the lab network.
POD_NETWORK_SYSCTLS = "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n"


def node_index(name: str) -> int:
    return int(name.removeprefix("node"))


def node_addresses(name: str) -> list[dict]:
    index = node_index(name)
    return [{"type": "InternalIP", "address": f"192.168.200.{index}"},
            {"type": "InternalIP", "address": f"fd00:200::{index}"},
            {"type": "Hostname", "address": name}]


def node_images() -> dict:
    """Image references the nodes can run: kube-proxy of every Kubernetes version built here."""
    images = {}
    for built in sorted((lab.cache_dir() / "k8s").glob("v*/kube-proxy")):
        tag = built.parent.name
        images[f"registry.k8s.io/kube-proxy:{tag}"] = {
            "files": {"/usr/local/bin/kube-proxy": f"{NODE_IMAGES}/{tag}/kube-proxy"}}
    return images


def runner_config(plane: ControlPlane, name: str) -> dict:
    index = node_index(name)
    return {
        "node": name, "server": plane.node_server,
        "ca": "/etc/kubeipvs-podrunner/ca.crt", "cert": "/etc/kubeipvs-podrunner/node.crt",
        "key": "/etc/kubeipvs-podrunner/node.key",
        "addresses": node_addresses(name),
        "pod_cidrs": [f"10.244.{index}.0/24", f"fd00:10:244:{index}::/64"],
        "kubelet_version": plane.info["kubernetes"],
        "images": node_images(),
    }


def join(plane: ControlPlane, names: list[str] | None = None) -> list[str]:
    """Make the running lab VMs (or ``names``) Nodes of the cluster, each with its pod runner."""
    import io
    import tarfile

    nodes = [node for node in lab.running_nodes() if names is None or node["name"] in names]
    if not nodes:
        raise LabError("no lab VM runs: 'make lab-up' first")
    started = time.monotonic()
    for node in nodes:
        certificate, key = node_certificate(plane.pki, node["name"])
        files = {
            "usr/local/lib/kubeipvs-podrunner/podrunner.py": (RUNNER.read_bytes(), 0o755),
            "etc/kubeipvs-podrunner/config.json": (json.dumps(runner_config(plane, node["name"]), indent=2).encode(),
                                                   0o600),
            "etc/kubeipvs-podrunner/ca.crt": ((plane.pki / "ca.crt").read_bytes(), 0o644),
            "etc/kubeipvs-podrunner/node.crt": (certificate.read_bytes(), 0o644),
            "etc/kubeipvs-podrunner/node.key": (key.read_bytes(), 0o600),
            "etc/systemd/system/kubeipvs-podrunner.service": (RUNNER_UNIT.encode(), 0o644),
            "etc/sysctl.d/90-kubeipvs-lab-pods.conf": (POD_NETWORK_SYSCTLS.encode(), 0o644),
        }
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, (content, mode) in files.items():
                entry = tarfile.TarInfo(path)
                entry.size, entry.mode, entry.mtime = len(content), mode, int(time.time())
                tar.addfile(entry, io.BytesIO(content))
        script = (
            "set -e; tar -xf - -C /; "
            f"grep -q ' {NODE_IMAGES} ' /etc/fstab || printf '{IMAGE_MOUNT}' >>/etc/fstab; "
            f"mkdir -p {NODE_IMAGES}; mountpoint -q {NODE_IMAGES} || mount {NODE_IMAGES}; "
            "sysctl -q -p /etc/sysctl.d/90-kubeipvs-lab-pods.conf; "
            "systemctl daemon-reload; systemctl enable -q kubeipvs-podrunner; "
            "systemctl restart kubeipvs-podrunner"
        )
        result = subprocess.run(lab.ssh_command(node, script), input=archive.getvalue(), capture_output=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            raise LabError(f"{node['name']}: joining failed: {result.stderr.decode(errors='replace')[-2000:]}")
    wanted = {node["name"] for node in nodes}
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready = {item["metadata"]["name"] for item in plane.request("/api/v1/nodes")[1].get("items") or []
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in item["status"].get("conditions") or [])}
        if wanted <= ready:
            log(f"{', '.join(sorted(wanted))} joined the cluster in {time.monotonic() - started:.0f}s")
            return sorted(wanted)
        time.sleep(1)
    raise LabError(f"nodes not Ready after {START_TIMEOUT:.0f}s: {sorted(wanted - ready)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("--version", default=None,
                              help="build this version's programs only (default: the cluster's, then every older kube-proxy)")
    sub.add_parser("up")
    join_parser = sub.add_parser("join")
    join_parser.add_argument("nodes", nargs="*")
    for verb in ("apply", "delete"):
        sub.add_parser(verb).add_argument("file", type=Path)
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    try:
        if args.command == "build":
            print(*([build(args.version.lstrip("v"))] if args.version else build_all()), sep="\n")
        elif args.command == "up":
            ControlPlane().up()
        elif args.command == "apply":
            ControlPlane().apply(load_objects(args.file))
        elif args.command == "delete":
            ControlPlane().delete(load_objects(args.file))
        elif args.command == "join":
            join(ControlPlane(), args.nodes or None)
        elif args.command == "down":
            log(f"stopped {ControlPlane().down()} control plane process(es)")
        elif args.command == "status":
            print(ControlPlane().status())
    except (LabError, subprocess.CalledProcessError) as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
