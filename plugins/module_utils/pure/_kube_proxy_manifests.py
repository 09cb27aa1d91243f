# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The objects of a kube-proxy deployment, shaped like kubeadm's, and how to compare them.

Pure functions (no Ansible, no API). The API server adds defaults to what it stores (for
example terminationMessagePath, dnsPolicy, a hostPath type), so a stored object *contains*
the desired one when every field the collection sets has the same value; extra fields are the
server's and are left alone.
"""

from __future__ import annotations

import copy
import json

try:
    import yaml
except ImportError:  # the modules check _kube_proxy_config.HAS_YAML before anything else
    yaml = None

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubeipvs.node"
POD_LABEL = {"k8s-app": "kube-proxy"}
CONFIG_DIR = "/var/lib/kube-proxy"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def owned(obj):
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def _metadata(name, namespace=None, extra_labels=None):
    metadata = {"name": name, "labels": dict(extra_labels or {}, **{MANAGED_BY_LABEL: MANAGED_BY})}
    if namespace:
        metadata["namespace"] = namespace
    return metadata


def service_account(namespace, name):
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(name, namespace)}


def cluster_role_binding(binding_name, cluster_role, namespace, service_account_name):
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": _metadata(binding_name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": namespace}],
    }


def kubeconfig_text(api_server):
    """kube-proxy's own kubeconfig: the control plane address (it cannot use the Service VIP it
    programs itself) and the pod's service account token, as kubeadm writes it."""
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"cluster": {"certificate-authority": f"{SERVICE_ACCOUNT_DIR}/ca.crt", "server": api_server},
                      "name": "default"}],
        "contexts": [{"context": {"cluster": "default", "namespace": "default", "user": "default"},
                      "name": "default"}],
        "current-context": "default",
        "users": [{"name": "default", "user": {"tokenFile": f"{SERVICE_ACCOUNT_DIR}/token"}}],
    }
    if yaml is None:
        return json.dumps(kubeconfig, indent=2) + "\n"  # JSON is YAML too
    return yaml.safe_dump(kubeconfig, sort_keys=False, default_flow_style=False)


def config_map(namespace, name, config_key, config_text, api_server):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, namespace, {"app": "kube-proxy"}),
            "data": {"kubeconfig.conf": kubeconfig_text(api_server), config_key: config_text}}


def health_endpoint(healthz_bind_address):
    """(host, port) of kube-proxy's /healthz from its ``healthzBindAddress`` (empty: 0.0.0.0:10256);
    host None when kube-proxy listens on every address, so the probe goes to the pod's (node's) IP."""
    address = healthz_bind_address or "0.0.0.0:10256"
    host, _sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        host, port = address.strip("[]"), "10256"
    return (None if host in ("", "0.0.0.0", "::") else host), int(port)


def daemon_set(namespace, name, image, configmap_name, config_key, service_account_name, node_selector,
               image_pull_policy="IfNotPresent", healthz_bind_address=""):
    """kubeadm's kube-proxy DaemonSet plus a readiness probe on kube-proxy's own /healthz, so a pod is
    Ready only once kube-proxy has programmed the node (what a restart waits for)."""
    probe_host, probe_port = health_endpoint(healthz_bind_address)
    probe = {"httpGet": {"path": "/healthz", "port": probe_port, "scheme": "HTTP"}, "periodSeconds": 2,
             "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}
    if probe_host:
        probe["httpGet"]["host"] = probe_host
    container = {
        "name": "kube-proxy",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["/usr/local/bin/kube-proxy", f"--config={CONFIG_DIR}/{config_key}",
                    "--hostname-override=$(NODE_NAME)"],
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"mountPath": CONFIG_DIR, "name": "kube-proxy"},
            # readOnly false is the default, which the API server does not store: leaving it out keeps
            # the stored object comparable with this one.
            {"mountPath": "/run/xtables.lock", "name": "xtables-lock"},
            # No /lib/modules, unlike kubeadm's: the node role loads the modules, and a kube-proxy
            # that sees them flushes every IPVS service on the node when it starts in nftables mode
            # (see node_kernel_modules below).
        ],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        "readinessProbe": probe,
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _metadata(name, namespace, POD_LABEL),
        "spec": {
            "selector": {"matchLabels": dict(POD_LABEL)},
            "template": {
                "metadata": {"labels": dict(POD_LABEL)},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "containers": [container],
                    "hostNetwork": True,
                    "serviceAccountName": service_account_name,
                    "volumes": [
                        {"name": "kube-proxy", "configMap": {"name": configmap_name}},
                        {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                    ],
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": dict(node_selector),
                },
            },
        },
    }


# Fields of a DaemonSet the module sets only when it creates one: changing them later would
# undo what kube_proxy_restart does during a controlled switch.
CREATE_ONLY = {"DaemonSet": {"spec": {"updateStrategy": {"type": "RollingUpdate"}}}}


def contains(actual, desired):
    """True when every field of ``desired`` is in ``actual`` with the same value (lists: same
    length, item by item)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(contains(actual.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(actual) == len(desired)
                and all(contains(a, d) for a, d in zip(actual, desired, strict=True)))
    return actual == desired


def overlay(actual, desired):
    """``actual`` with the fields of ``desired`` written over it: mappings merge, lists replace
    (an item keeps the server's extra fields when the list keeps its length and the item its name)."""
    if isinstance(desired, dict) and isinstance(actual, dict):
        result = copy.deepcopy(actual)
        for key, value in desired.items():
            result[key] = overlay(actual.get(key), value)
        return result
    if isinstance(desired, list) and isinstance(actual, list) and len(actual) == len(desired):
        return [overlay(a, d) if same_item(a, d) else copy.deepcopy(d) for a, d in zip(actual, desired, strict=True)]
    return copy.deepcopy(desired)


def same_item(actual, desired):
    """List items are the same thing when their names agree (or neither has one)."""
    if isinstance(actual, dict) and isinstance(desired, dict):
        return actual.get("name") == desired.get("name")
    return False


def managed_view(obj, desired):
    """The part of ``obj`` that ``desired`` manages (for diffs): desired's keys, obj's values."""
    if isinstance(desired, dict):
        if not isinstance(obj, dict):
            return obj
        return {k: managed_view(obj.get(k), v) for k, v in desired.items() if k in obj}
    if isinstance(desired, list) and isinstance(obj, list) and len(obj) == len(desired):
        return [managed_view(o, d) for o, d in zip(obj, desired, strict=True)]
    return copy.deepcopy(obj)


# ----------------------------------------------------------------------------------------------
# The node's kernel modules in kube-proxy's pods. kube-proxy starting in nftables mode runs its IPVS
# cleanup - a flush of the node's whole IPVS table, keepalived's services too - unless
# `modprobe -va ip_vs` fails in its container, which it does when the node's /lib/modules is not
# mounted there (an image carries no modules). Nothing else needs them: IPVS mode works with the
# modules loaded by the node (kernel_module, the ipvs_node role), and the kernel loads the ones it
# asks for itself with the node's modprobe.

NODE_MODULES = "/lib/modules"
_MODULE_PATHS = ("/lib/modules", "/usr/lib/modules")


def _normal(path):
    return "/" + "/".join(part for part in str(path).split("/") if part not in ("", "."))


def _exposes(mount_path):
    """'inside': the mount is the modules' folder or in it; 'over': it contains it; None: neither."""
    path = _normal(mount_path)
    if any(path == m or path.startswith(m + "/") for m in _MODULE_PATHS):
        return "inside"
    if any(m.startswith(path.rstrip("/") + "/") for m in _MODULE_PATHS):
        return "over"
    return None


def _host_paths(pod_spec):
    return {v.get("name"): v["hostPath"].get("path") for v in pod_spec.get("volumes") or [] if v.get("hostPath")}


def node_kernel_modules(pod_spec):
    """The mounts through which a pod's containers see the node's kernel modules, as
    ``container:mountPath`` strings: a hostPath volume mounted at /lib/modules, /usr/lib/modules,
    in them or over them."""
    host_paths = _host_paths(pod_spec)
    return [f"{container.get('name')}:{mount.get('mountPath')}"
            for key in ("initContainers", "containers") for container in pod_spec.get(key) or []
            for mount in container.get("volumeMounts") or []
            if mount.get("name") in host_paths and _exposes(mount.get("mountPath", ""))]


def with_node_kernel_modules(pod_spec, wanted):
    """``pod_spec`` changed so that its containers see the node's kernel modules (``wanted``) or do
    not: hostPath mounts at or in /lib/modules go (with their volumes, when nothing else mounts them),
    or kubeadm's read-only ``lib-modules`` mount of /lib/modules comes into the container named
    kube-proxy (or the only one). Raises ValueError when that cannot be done without touching
    anything else."""
    spec = copy.deepcopy(pod_spec)
    seen = node_kernel_modules(spec)
    if bool(seen) == wanted:
        return spec
    host_paths = _host_paths(spec)
    if not wanted:
        over = [f"{c.get('name')}:{m.get('mountPath')}" for key in ("initContainers", "containers")
                for c in spec.get(key) or [] for m in c.get("volumeMounts") or []
                if m.get("name") in host_paths and _exposes(m.get("mountPath", "")) == "over"]
        if over:
            raise ValueError(f"the node's kernel modules are visible through {', '.join(over)}, a hostPath mount "
                             "over /lib/modules; mount them apart (or not at all) to let them be hidden")
        removed = set()
        for key in ("initContainers", "containers"):
            for container in spec.get(key) or []:
                mounts = container.get("volumeMounts") or []
                gone = [m for m in mounts if m.get("name") in host_paths and _exposes(m.get("mountPath", ""))]
                removed.update(m.get("name") for m in gone)
                container["volumeMounts"] = [m for m in mounts if m not in gone]
        still_used = {m.get("name") for key in ("initContainers", "containers") for c in spec.get(key) or []
                      for m in c.get("volumeMounts") or []}
        spec["volumes"] = [v for v in spec.get("volumes") or []
                           if v.get("name") not in removed or v.get("name") in still_used]
        return spec
    containers = spec.get("containers") or []
    target = [c for c in containers if c.get("name") == "kube-proxy"] or (containers if len(containers) == 1 else [])
    if not target:
        raise ValueError("no container named kube-proxy (and more than one container) to mount the node's "
                         "kernel modules in")
    volumes = spec.setdefault("volumes", [])
    name = "lib-modules"
    existing = next((v for v in volumes if v.get("name") == name), None)
    if existing is None:
        volumes.append({"name": name, "hostPath": {"path": NODE_MODULES}})
    elif _normal((existing.get("hostPath") or {}).get("path", "")) not in _MODULE_PATHS:
        raise ValueError(f"the pod already has a volume named {name} that is not the node's {NODE_MODULES}")
    if any(_normal(m.get("mountPath", "")) == NODE_MODULES for m in target[0].get("volumeMounts") or []):
        raise ValueError(f"container {target[0].get('name')} already mounts something else at {NODE_MODULES}")
    target[0].setdefault("volumeMounts", []).append({"mountPath": NODE_MODULES, "name": name, "readOnly": True})
    return spec
