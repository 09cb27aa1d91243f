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
            {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": True},
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
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
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
