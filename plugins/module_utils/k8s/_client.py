# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place that builds the Kubernetes API client, and a small dict-in dict-out REST wrapper.

Precedence, as kubernetes.core does it: module parameters, then the K8S_AUTH_* environment
(through the argument spec's fallbacks), then the in-cluster service account, then the
kubeconfig (KUBECONFIG or ~/.kube/config). Objects travel as plain dicts: the modules compare
and merge them, and the typed models of the client would only get in the way.
"""

from __future__ import annotations

import json
import os
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError

try:
    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None

AUTH_ARG_SPEC = dict(
    kubeconfig=dict(type="path", fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
    context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
    host=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_HOST"])),
    api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_API_KEY"])),
    ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=(env_fallback, ["K8S_AUTH_SSL_CA_CERT"])),
    client_cert=dict(type="path", aliases=["cert_file"], fallback=(env_fallback, ["K8S_AUTH_CERT_FILE"])),
    client_key=dict(type="path", aliases=["key_file"], no_log=False, fallback=(env_fallback, ["K8S_AUTH_KEY_FILE"])),
    validate_certs=dict(type="bool", aliases=["verify_ssl"], fallback=(env_fallback, ["K8S_AUTH_VERIFY_SSL"])),
    request_timeout=dict(type="int", default=30),
)

# kind -> (API prefix, plural, namespaced); the kinds the collection reads or writes.
RESOURCES = {
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Node": ("/api/v1", "nodes", False),
    "Namespace": ("/api/v1", "namespaces", False),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "ServiceCIDR": ("/apis/networking.k8s.io/v1", "servicecidrs", False),
}
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
LIST_PAGE_SIZE = 500


class KubeApiError(KubeIpvsError):
    """An answer of the API server that is not 2xx; ``status`` and ``reason`` come from its Status."""

    def __init__(self, msg, status, reason="", **details):
        super().__init__(msg, status=status, reason=reason, **details)
        self.status = status
        self.reason = reason


def require_kubernetes(module):
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMPORT_ERROR)


def require_yaml(module, has_yaml, import_error):
    if not has_yaml:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=import_error)


def client_from_module(module):
    require_kubernetes(module)
    timeout = module.params.get("request_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400):
        raise KubeIpvsError(f"request_timeout must be 1-86400 seconds, got {timeout!r}")
    for option in ("host", "api_key", "context"):
        value = module.params.get(option)
        if isinstance(value, str) and any(ord(char) < 32 or ord(char) == 127 for char in value):
            # a header or URL with a line break in it is a request nobody asked for
            raise KubeIpvsError(f"{option} holds a control character")
    return KubeClient(build_configuration(module.params), timeout or 30)


def build_configuration(params):
    """A kubernetes.client.Configuration from the auth parameters (see the module docstring)."""
    configuration = k8s_client.Configuration()
    kubeconfig, context, host = params.get("kubeconfig"), params.get("context"), params.get("host")
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(IN_CLUSTER_TOKEN)
    if kubeconfig or context or (not host and not in_cluster):
        path = kubeconfig or os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
        if not os.path.isfile(path):
            raise KubeIpvsError(
                f"no kubeconfig at {path}: pass kubeconfig (or set K8S_AUTH_KUBECONFIG), or host and api_key")
        try:
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                        persist_config=False)
        except Exception as error:  # pylint: disable=broad-exception-caught  # not YAML, or YAML of the wrong shape
            reason = str(error) if isinstance(error, (ConfigException, OSError)) else (
                f"it is not a kubeconfig ({type(error).__name__}: {error})")
            raise KubeIpvsError(f"cannot use kubeconfig {path}: {reason}"[:1000]) from None
    elif not host:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as error:
            raise KubeIpvsError(f"cannot use the in-cluster service account: {error}") from None
    overrides = {}
    if host:
        overrides["host"] = host.rstrip("/")
    if params.get("api_key"):
        overrides["api_key"] = {"BearerToken": "Bearer " + params["api_key"]}
        overrides["api_key_prefix"] = {}
    for option, attribute in (("ca_cert", "ssl_ca_cert"), ("client_cert", "cert_file"), ("client_key", "key_file"),
                              ("validate_certs", "verify_ssl")):
        if params.get(option) is not None:
            overrides[attribute] = params[option]
    apply_overrides(configuration, overrides)
    # Fail fast and say why: no silent urllib3 retries against a dead endpoint.
    configuration.retries = False
    return configuration


def apply_overrides(configuration, overrides):
    """Set ``overrides`` on the configuration and keep them set.

    A kubeconfig installs a refresh hook that runs before every request (to renew exec and OIDC
    tokens) and copies the kubeconfig's host, token and certificates back over the
    configuration; the explicit options must survive it. With an explicit api_key the
    kubeconfig's credentials are not used at all, so its hook goes.
    """
    for attribute, value in overrides.items():
        setattr(configuration, attribute, value)
    refresh = configuration.refresh_api_key_hook
    if refresh is None or not overrides:
        return
    if "api_key" in overrides:
        configuration.refresh_api_key_hook = None
        return

    def refresh_then_override(config):
        refresh(config)
        for attribute, value in overrides.items():
            setattr(config, attribute, value)

    configuration.refresh_api_key_hook = refresh_then_override


class KubeClient:
    """get / list / create / replace / patch / delete on the kinds in RESOURCES, with dicts."""

    def __init__(self, configuration, request_timeout=30):
        self.host = configuration.host
        self.api = k8s_client.ApiClient(configuration)
        self.request_timeout = request_timeout

    @staticmethod
    def path(kind, namespace=None, name=None):
        prefix, plural, namespaced = RESOURCES[kind]
        path = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
        return path + (f"/{name}" if name else "")

    def request(self, method, path, query=None, body=None, content_type="application/json"):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.api.param_serialize(method=method, resource_path=path, query_params=list(query or []),
                                              header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*serialized, _request_timeout=self.request_timeout)
            response.read()
        except urllib3.exceptions.HTTPError as error:
            reason = getattr(error, "reason", None) or error
            raise KubeIpvsError(f"cannot reach the Kubernetes API at {self.host}: {reason}; check host/kubeconfig "
                                "and that the API server is running", host=self.host) from None
        except k8s_client.exceptions.ApiException as error:
            # Newer clients wrap transport failures (TLS verification, for one) as status 0.
            if getattr(error, "status", None):
                raise
            reason = getattr(error, "reason", None) or error
            raise KubeIpvsError(f"cannot reach the Kubernetes API at {self.host}: {reason}; check host/kubeconfig, "
                                "ca_cert and that the API server is running", host=self.host) from None
        data = response.data or b""
        if not 200 <= response.status <= 299:
            raise self.api_error(method, path, response.status, data)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise KubeIpvsError(f"the Kubernetes API at {self.host} answered {method} {path} with something that "
                                f"is not JSON: {data[:200]!r}") from None

    def api_error(self, method, path, status, data):
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = message or data[:200].decode("utf-8", "replace") or f"HTTP {status}"
        if status == 401:
            text = (f"the Kubernetes API at {self.host} rejected the credentials (401 Unauthorized): check api_key, "
                    "the kubeconfig user or the client certificate")
        elif status == 403:
            text = f"the Kubernetes API refused {method} {path} (403 Forbidden): {message}; grant the user RBAC access"
        else:
            text = f"{method} {path} failed ({status} {reason}): {message}"
        return KubeApiError(text, status, reason, host=self.host)

    def version(self):
        return self.request("GET", "/version")

    def get(self, kind, name, namespace=None):
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind, namespace=None, label_selector=None, field_selector=None):
        """All items, following the server's pagination."""
        items, token = [], None
        while True:
            query = [("limit", LIST_PAGE_SIZE)]
            query += [("labelSelector", label_selector)] if label_selector else []
            query += [("fieldSelector", field_selector)] if field_selector else []
            query += [("continue", token)] if token else []
            page = self.request("GET", self.path(kind, namespace), query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    @staticmethod
    def _dry(dry_run):
        return [("dryRun", "All")] if dry_run else []

    def create(self, kind, body, namespace=None, dry_run=False):
        return self.request("POST", self.path(kind, namespace), self._dry(dry_run), body)

    def replace(self, kind, body, namespace=None, dry_run=False):
        return self.request("PUT", self.path(kind, namespace, body["metadata"]["name"]), self._dry(dry_run), body)

    def patch(self, kind, name, patch, namespace=None, dry_run=False, strategic=False):
        content_type = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self.request("PATCH", self.path(kind, namespace, name), self._dry(dry_run), patch, content_type)

    def delete(self, kind, name, namespace=None, dry_run=False):
        return self.request("DELETE", self.path(kind, namespace, name), self._dry(dry_run))
