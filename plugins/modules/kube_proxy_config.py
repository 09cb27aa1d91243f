#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_config
short_description: Read and change the KubeProxyConfiguration in the kube-proxy ConfigMap
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Reads the C(KubeProxyConfiguration) YAML stored in the kube-proxy ConfigMap (kubeadm's
    C(kube-system/kube-proxy), key C(config.conf)), merges the requested fields into it and writes
    it back when anything differs.
  - Every key and value it is not asked to change is kept (YAML comments are not, when the text
    is rewritten). A duration equal in value to the current one (V(15m) and V(15m0s)) is no change.
  - The whole resulting configuration is validated before anything is written, check mode
    included, against the C(KubeProxyConfiguration) schema of its C(apiVersion) (the fields and
    types of kube-proxy's C(v1alpha1) config types). A value of the wrong type, another C(kind), an
    unknown top-level field, or an unknown deeper field this call sets, is an error; so is a mode or
    scheduler kube-proxy does not know.
  - A write that loses a race (409 Conflict on the resourceVersion) is retried - re-read,
    re-merged, re-written - up to O(max_attempts) times.
  - Check mode sends the update with server-side dry-run (C(dryRun=All)), so the API server
    validates it without storing it.
  - Editing the ConfigMap does not restart kube-proxy; use M(kubeipvs.node.kube_proxy_restart).
extends_documentation_fragment:
  - kubeipvs.node.attributes.api
  - kubeipvs.node.attributes
  - kubeipvs.node.k8s_auth
  - kubeipvs.node.kube_proxy_settings
options:
  namespace:
    description: Namespace of the ConfigMap.
    type: str
    default: kube-system
  configmap_name:
    description: Name of the ConfigMap.
    type: str
    default: kube-proxy
  config_key:
    description: Key of the ConfigMap that holds the KubeProxyConfiguration YAML.
    type: str
    default: config.conf
  merge:
    description:
      - Any other KubeProxyConfiguration fields, as a nested mapping merged into the current
        configuration (mappings merge key by key; lists and scalars replace).
      - Setting a field here and through its named option to different values is an error.
    type: dict
    default: {}
  max_attempts:
    description: How many times to write before giving up on 409 conflicts.
    type: int
    default: 5
  missing_ok:
    description:
      - When the ConfigMap does not exist, return RV(found=false) instead of failing (for a role
        that deploys kube-proxy when there is none).
    type: bool
    default: false
seealso:
  - module: kubeipvs.node.kube_proxy
  - module: kubeipvs.node.kube_proxy_restart
"""

EXAMPLES = r"""
- name: Switch kube-proxy to IPVS with strict ARP
  kubeipvs.node.kube_proxy_config:
    kubeconfig: /etc/kubernetes/admin.conf
    mode: ipvs
    ipvs_scheduler: rr
    ipvs_strict_arp: true
  delegate_to: localhost
  run_once: true

- name: Leave conntrack sizing to the node role and set any other field
  kubeipvs.node.kube_proxy_config:
    conntrack_max_per_core: 0
    merge:
      metricsBindAddress: 0.0.0.0:10249
      nodePortAddresses: [primary]

- name: Read the configuration only
  kubeipvs.node.kube_proxy_config:
  register: kube_proxy
"""

RETURN = r"""
config:
  description: The KubeProxyConfiguration after the run (as it would be, in check mode); null when not found.
  returned: success
  type: dict
  sample: {apiVersion: kubeproxy.config.k8s.io/v1alpha1, kind: KubeProxyConfiguration, mode: ipvs,
           ipvs: {scheduler: rr, strictARP: true}}
settings:
  description:
    - What kube-proxy runs with, from RV(config), under the collection's option names; an unset field
      takes kube-proxy's default (mode V(iptables), scheduler V(rr), masquerade bit 14).
      C(masquerade_bit) and C(masquerade_all) are per mode, as kube-proxy reads them (nftables mode
      from the C(nftables) section, the others from C(iptables)). Roles use this rather than reading
      the configuration's own field paths.
    - C(localhost_node_ports) is C(iptables.localhostNodePorts) (unset - true); C(node_port_addresses) is
      C(nodePortAddresses) as written, keywords such as C(primary) included; C(feature_gates) the
      C(featureGates) set to true or false.
    - Empty when RV(config) is null.
  returned: success
  type: dict
  sample: {mode: ipvs, ipvs_scheduler: rr, ipvs_exclude_cidrs: [192.0.2.50/32], cluster_cidr: 10.244.0.0/16,
           masquerade_bit: {iptables: 14, ipvs: 14, nftables: 14},
           masquerade_all: {iptables: false, ipvs: false, nftables: false}, node_port_addresses: [],
           localhost_node_ports: true, feature_gates: {}}
configmap:
  description: The ConfigMap as namespace/name.
  returned: success
  type: str
  sample: kube-system/kube-proxy
found:
  description: Whether the ConfigMap exists (false only with O(missing_ok=true)).
  returned: success
  type: bool
  sample: true
attempts:
  description: Writes tried (more than 1 after resourceVersion conflicts).
  returned: success
  type: int
  sample: 1
diff:
  description: The config YAML before and after.
  returned: when diff mode is on
  type: dict
  sample: {before: "mode: iptables\n", after: "mode: ipvs\n"}
"""

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
    merge_config,
    parse_config,
    patch_from_options,
    render_config,
    settings_arg_spec,
    settings_of,
    validate_config,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    CONFIGMAP_KEY,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
)


def configure(module):
    params = module.params
    if params["max_attempts"] < 1:
        raise KubeIpvsError("max_attempts must be 1 or more")
    patch = patch_from_options(params, params["merge"])
    # Validate what was asked for before talking to the API at all.
    validate_config(merge_config({}, patch), patch)
    namespace, name, key = params["namespace"], params["configmap_name"], params["config_key"]
    DNS1123_LABEL.check(namespace, "namespace")
    DNS1123_SUBDOMAIN.check(name, "configmap_name")
    CONFIGMAP_KEY.check(key, "config_key")
    where = f"ConfigMap {namespace}/{name} key {key}"
    client = client_from_module(module)
    for attempt in range(1, params["max_attempts"] + 1):
        configmap = client.get("ConfigMap", name, namespace)
        if configmap is None and params["missing_ok"]:
            return dict(changed=False, found=False, config=None, settings={}, configmap=f"{namespace}/{name}",
                        attempts=0)
        if configmap is None:
            raise KubeIpvsError(f"ConfigMap {namespace}/{name} not found; deploy kube-proxy with "
                                "kubeipvs.node.kube_proxy or set namespace/configmap_name")
        data = configmap.get("data") or {}
        if key not in data:
            raise KubeIpvsError(f"ConfigMap {namespace}/{name} has no key {key!r} (keys: {sorted(data)}); "
                                "set config_key")
        before_text = data[key]
        current = parse_config(before_text, where)
        desired = merge_config(current, patch)
        if desired == current:  # nothing to write: report what is stored, valid or not
            return result(module, False, current, before_text, before_text, namespace, name, attempt)
        validate_config(desired, patch)
        after_text = render_config(desired)
        configmap["data"] = dict(data, **{key: after_text})
        try:
            client.replace("ConfigMap", configmap, namespace, dry_run=module.check_mode)
        except KubeApiError as error:
            if error.status == 409:
                continue
            raise
        return result(module, True, desired, before_text, after_text, namespace, name, attempt)
    raise KubeIpvsError(f"{where}: gave up after {params['max_attempts']} attempts, each lost to a concurrent "
                        "update (409 Conflict); try again or raise max_attempts")


def result(module, changed, config, before_text, after_text, namespace, name, attempts):
    output = dict(changed=changed, found=True, config=config, settings=settings_of(config),
                  configmap=f"{namespace}/{name}", attempts=attempts)
    if module._diff:
        output["diff"] = dict(before=before_text, after=after_text,
                              before_header=f"{namespace}/{name} {module.params['config_key']}",
                              after_header=f"{namespace}/{name} {module.params['config_key']}")
    return output


def main():
    argument_spec = dict(
        AUTH_ARG_SPEC,
        namespace=dict(type="str", default="kube-system"),
        configmap_name=dict(type="str", default="kube-proxy"),
        config_key=dict(type="str", default="config.conf", no_log=False),
        merge=dict(type="dict", default={}),
        max_attempts=dict(type="int", default=5),
        missing_ok=dict(type="bool", default=False),
    )
    argument_spec.update(settings_arg_spec())
    module = ansible_module(AnsibleModule, argument_spec=argument_spec, supports_check_mode=True)
    require_yaml(module, HAS_YAML, YAML_IMPORT_ERROR)
    run_module(module, configure)


if __name__ == "__main__":
    main()
