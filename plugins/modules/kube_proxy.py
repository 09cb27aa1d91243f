#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy
short_description: Deploy kube-proxy (ServiceAccount, ClusterRoleBinding, ConfigMap, DaemonSet) like kubeadm does
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - For clusters without kube-proxy, creates the objects kubeadm's kube-proxy addon creates - the
    ServiceAccount C(kube-proxy), the ClusterRoleBinding C(kubeadm:node-proxier) to the ClusterRole
    C(system:node-proxier), the ConfigMap (C(config.conf) and C(kubeconfig.conf)) and the
    DaemonSet (host network, privileged, C(system-node-critical), tolerating every taint, with
    C(/run/xtables.lock) and the ConfigMap mounted). Unlike kubeadm's it does not mount the
    node's C(/lib/modules) - kube-proxy would load nothing the node has not loaded (role
    C(kubeipvs.node.ipvs_node)), and with them its start in C(nftables) mode flushes every IPVS
    service on the node, keepalived's too (see M(kubeipvs.node.kube_proxy_restart)).
  - The objects carry the label C(app.kubernetes.io/managed-by=kubeipvs.node). Objects of the same
    name without it (kubeadm's) are never changed or deleted - they are reported as C(foreign);
    change such a deployment with M(kubeipvs.node.kube_proxy_config).
  - Compares only the fields it sets, so the defaults the API server adds are no change. In the
    ConfigMap, O(config) is merged into the stored configuration like M(kubeipvs.node.kube_proxy_config)
    does. The DaemonSet's update strategy is set only when it is created.
  - Check mode sends every write with server-side dry-run (C(dryRun=All)).
extends_documentation_fragment:
  - kubeipvs.node.attributes.api
  - kubeipvs.node.attributes
  - kubeipvs.node.k8s_auth
  - kubeipvs.node.kube_proxy_settings
options:
  state:
    description: V(present) creates or updates the objects; V(absent) deletes the ones this collection created.
    type: str
    choices: [present, absent]
    default: present
  namespace:
    description: Namespace of the ServiceAccount, ConfigMap and DaemonSet.
    type: str
    default: kube-system
  name:
    description: Name of the ServiceAccount, ConfigMap and DaemonSet.
    type: str
    default: kube-proxy
  cluster_role_binding_name:
    description: Name of the ClusterRoleBinding.
    type: str
    default: kubeadm:node-proxier
  cluster_role:
    description: The ClusterRole kube-proxy is bound to (Kubernetes ships it).
    type: str
    default: system:node-proxier
  image:
    description: Image repository of kube-proxy, without the tag.
    type: str
    default: registry.k8s.io/kube-proxy
  version:
    description: Image tag, the Kubernetes version (for example V(v1.31.2)). Required with O(state=present).
    type: str
  image_pull_policy:
    description: The container's imagePullPolicy.
    type: str
    choices: [Always, IfNotPresent, Never]
    default: IfNotPresent
  api_server:
    description:
      - URL of the control plane kube-proxy talks to, written into C(kubeconfig.conf) (kube-proxy
        cannot use the C(kubernetes) Service, which it programs itself). Required to create the ConfigMap.
    type: str
  config:
    description:
      - "KubeProxyConfiguration fields merged into the configuration (kubeadm's defaults when the
        ConfigMap is created), for example C({featureGates: {...}}), as O(kubeipvs.node.kube_proxy_config#module:merge)."
      - The named options (O(mode), O(ipvs_scheduler) and the rest) set their fields over these, as
        M(kubeipvs.node.kube_proxy_config) does; a field set here and through its named option to
        different values is an error.
    type: dict
    default: {}
  config_key:
    description: ConfigMap key of the KubeProxyConfiguration.
    type: str
    default: config.conf
  node_selector:
    description: The pods' nodeSelector.
    type: dict
    default: {kubernetes.io/os: linux}
seealso:
  - module: kubeipvs.node.kube_proxy_config
  - module: kubeipvs.node.kube_proxy_restart
"""

EXAMPLES = r"""
- name: Deploy kube-proxy in IPVS mode
  kubeipvs.node.kube_proxy:
    kubeconfig: /etc/kubernetes/admin.conf
    version: v1.31.2
    api_server: https://10.0.0.10:6443
    config:
      mode: ipvs
      clusterCIDR: 10.244.0.0/16
      ipvs: {scheduler: rr, strictARP: true}
  delegate_to: localhost
  run_once: true

- name: Remove the kube-proxy this collection deployed
  kubeipvs.node.kube_proxy:
    state: absent
"""

RETURN = r"""
objects:
  description: What happened to each object - created, updated, unchanged, deleted, absent or foreign (left alone).
  returned: success
  type: list
  elements: dict
  sample: [{kind: DaemonSet, name: kube-system/kube-proxy, action: created}]
config:
  description: The KubeProxyConfiguration in the ConfigMap after the run (null when absent or foreign).
  returned: success
  type: dict
  sample: {kind: KubeProxyConfiguration, mode: ipvs}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s._client import (
    AUTH_ARG_SPEC,
    KubeApiError,
    client_from_module,
    require_yaml,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_config import (
    HAS_YAML,
    YAML_IMPORT_ERROR,
    default_config,
    merge_config,
    parse_config,
    patch_from_options,
    render_config,
    settings_arg_spec,
    validate_config,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_manifests import (
    CREATE_ONLY,
    cluster_role_binding,
    config_map,
    contains,
    daemon_set,
    kubeconfig_text,
    managed_view,
    overlay,
    owned,
    service_account,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    CONFIGMAP_KEY,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    PATH_SEGMENT,
    check_text,
    control_character,
)

MAX_ATTEMPTS = 5
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def label(kind, name, namespace):
    return f"{kind} {namespace + '/' if namespace else ''}{name}"


class Deployer:
    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.objects = []
        self.before = {}
        self.after = {}

    def record(self, kind, name, namespace, action, before=None, after=None):
        self.objects.append({"kind": kind, "name": f"{namespace}/{name}" if namespace else name, "action": action})
        self.before[label(kind, name, namespace)] = before
        self.after[label(kind, name, namespace)] = after
        if action == "foreign":
            self.module.warn(f"{label(kind, name, namespace)} exists and was not created by kubeipvs.node; "
                             "left unchanged")

    def ensure(self, kind, namespace, desired, desired_for=None):
        """Create ``desired`` or bring the managed fields of the stored object in line with it.

        ``desired_for(current)`` computes the desired object from the stored one (the ConfigMap's
        config is a merge into what is stored).
        """
        name = desired["metadata"]["name"]
        dry_run = self.module.check_mode
        for _attempt in range(MAX_ATTEMPTS):
            current = self.client.get(kind, name, namespace)
            if current is None:
                body = overlay(desired, CREATE_ONLY.get(kind, {}))
                created = self.client.create(kind, body, namespace, dry_run=dry_run)
                self.record(kind, name, namespace, "created", None, managed_view(created, desired))
                return created
            if not owned(current):
                self.record(kind, name, namespace, "foreign")
                return None
            wanted = desired_for(current) if desired_for else desired
            if contains(current, wanted):
                view = managed_view(current, wanted)
                self.record(kind, name, namespace, "unchanged", view, view)
                return current
            try:
                updated = self.client.replace(kind, overlay(current, wanted), namespace, dry_run=dry_run)
            except KubeApiError as error:
                if error.status == 409:
                    continue
                raise
            self.record(kind, name, namespace, "updated", managed_view(current, wanted), managed_view(updated, wanted))
            return updated
        raise KubeIpvsError(f"{label(kind, name, namespace)}: gave up after {MAX_ATTEMPTS} writes lost to "
                            "concurrent updates (409 Conflict)")

    def remove(self, kind, name, namespace):
        current = self.client.get(kind, name, namespace)
        if current is None:
            self.record(kind, name, namespace, "absent")
        elif not owned(current):
            self.record(kind, name, namespace, "foreign")
        else:
            try:
                self.client.delete(kind, name, namespace, dry_run=self.module.check_mode)
            except KubeApiError as error:
                if error.status != 404:
                    raise
            self.record(kind, name, namespace, "deleted", {"exists": True}, None)


def present(module, deployer):
    p = module.params
    namespace, name, key = p["namespace"], p["name"], p["config_key"]
    if not p["version"]:
        raise KubeIpvsError("version is required with state=present (the kube-proxy image tag, for example v1.31.2)")
    if not isinstance(p["version"], str) or not TAG_RE.fullmatch(p["version"]):
        raise KubeIpvsError(f"version {p['version']!r} is not a valid image tag")
    if p["api_server"] is not None and (control_character(p["api_server"]) is not None
                                        or not re.fullmatch(r"https?://[^/\s]+(/\S*)?", p["api_server"])):
        raise KubeIpvsError(f"api_server {p['api_server']!r} must be a URL such as https://10.0.0.10:6443")
    patch = patch_from_options(p, p["config"], merge_name="config")
    fresh_config = merge_config(default_config(), patch)
    validate_config(fresh_config, patch)
    client = deployer.client
    existing_configmap = client.get("ConfigMap", name, namespace)
    if existing_configmap is None and not p["api_server"]:
        raise KubeIpvsError(f"api_server is required to create ConfigMap {namespace}/{name} (kube-proxy's "
                            "kubeconfig.conf points at the control plane)")
    where = f"ConfigMap {namespace}/{name} key {key}"
    results = {}

    def configmap_for(current):
        data = dict(current.get("data") or {})
        if key not in data:
            raise KubeIpvsError(f"{where} is missing; the ConfigMap carries the kubeipvs.node label but no config")
        stored = parse_config(data[key], where)
        merged = merge_config(stored, patch)
        validate_config(merged, patch)
        results["config"] = merged
        wanted = {"metadata": {"labels": desired_cm["metadata"]["labels"]},
                  "data": {key: data[key] if merged == stored else render_config(merged)}}
        if p["api_server"]:
            wanted["data"]["kubeconfig.conf"] = kubeconfig_text(p["api_server"])
        return wanted

    desired_cm = config_map(namespace, name, key, render_config(fresh_config), p["api_server"] or "")
    deployer.ensure("ServiceAccount", namespace, service_account(namespace, name))
    deployer.ensure("ClusterRoleBinding", None, cluster_role_binding(p["cluster_role_binding_name"], p["cluster_role"],
                                                                     namespace, name))
    stored_cm = deployer.ensure("ConfigMap", namespace, desired_cm, configmap_for)
    if stored_cm is not None and "config" not in results:
        results["config"] = fresh_config
    deployer.ensure("DaemonSet", namespace, daemon_set(
        namespace, name, f"{p['image']}:{p['version']}", name, key, name, p["node_selector"], p["image_pull_policy"],
        (results.get("config") or {}).get("healthzBindAddress", "")))
    return results.get("config")


def check_names(params):
    """The names that become API paths and object fields, whitelisted before any request."""
    DNS1123_LABEL.check(params["namespace"], "namespace")
    DNS1123_SUBDOMAIN.check(params["name"], "name")
    PATH_SEGMENT.check(params["cluster_role_binding_name"], "cluster_role_binding_name")
    PATH_SEGMENT.check(params["cluster_role"], "cluster_role")
    CONFIGMAP_KEY.check(params["config_key"], "config_key")
    if not re.fullmatch(r"\S+", check_text(params["image"], "image")):
        raise KubeIpvsError(f"image {params['image']!r} must be one word (a registry path without spaces)")
    for key, value in (params["node_selector"] or {}).items():
        check_text(key, "node_selector key")
        check_text(value, f"node_selector.{key}")


def run(module):
    check_names(module.params)
    client = client_from_module(module)
    deployer = Deployer(module, client)
    p = module.params
    config = None
    if p["state"] == "present":
        config = present(module, deployer)
    else:
        deployer.remove("DaemonSet", p["name"], p["namespace"])
        deployer.remove("ConfigMap", p["name"], p["namespace"])
        deployer.remove("ClusterRoleBinding", p["cluster_role_binding_name"], None)
        deployer.remove("ServiceAccount", p["name"], p["namespace"])
    changed = any(o["action"] in ("created", "updated", "deleted") for o in deployer.objects)
    output = dict(changed=changed, objects=deployer.objects, config=config)
    if module._diff:
        output["diff"] = dict(before=deployer.before, after=deployer.after)
    return output


def main():
    argument_spec = dict(
        AUTH_ARG_SPEC,
        state=dict(type="str", choices=["present", "absent"], default="present"),
        namespace=dict(type="str", default="kube-system"),
        name=dict(type="str", default="kube-proxy"),
        cluster_role_binding_name=dict(type="str", default="kubeadm:node-proxier"),
        cluster_role=dict(type="str", default="system:node-proxier"),
        image=dict(type="str", default="registry.k8s.io/kube-proxy"),
        version=dict(type="str"),
        image_pull_policy=dict(type="str", choices=["Always", "IfNotPresent", "Never"], default="IfNotPresent"),
        api_server=dict(type="str"),
        config=dict(type="dict", default={}),
        config_key=dict(type="str", default="config.conf", no_log=False),
        node_selector=dict(type="dict", default={"kubernetes.io/os": "linux"}),
        **settings_arg_spec(),
    )
    module = ansible_module(AnsibleModule, argument_spec=argument_spec, supports_check_mode=True)
    require_yaml(module, HAS_YAML, YAML_IMPORT_ERROR)
    run_module(module, run)


if __name__ == "__main__":
    main()
