#!/usr/bin/python
# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_restart
short_description: Restart kube-proxy node by node and wait until each replacement is Ready
version_added: 0.1.0
author: kubeipvs.node maintainers (@kubeipvs)
description:
  - Deletes the kube-proxy pod of each named node (pods matching O(label_selector) with
    C(spec.nodeName=<node>)) and waits until the DaemonSet's replacement on that node - a pod
    with a new UID - has the condition C(Ready=True), one node after the other.
  - With O(all_nodes=true) deletes the pods of all nodes at once and waits for all of them.
  - When a replacement is not Ready within O(timeout) seconds the module fails with that pod's
    phase, conditions, container statuses and last events, and restarts no further node.
  - Can set the DaemonSet's update strategy first (O(update_strategy)) - V(OnDelete) lets a
    changed template reach only the nodes restarted here, which is how a mode switch is
    rolled out one node at a time.
  - Can hide the node's kernel modules from kube-proxy's pods, or show them again
    (O(node_kernel_modules)), in the same write. kube-proxy starting in C(nftables) mode first
    flushes the node's whole IPVS table - keepalived's services too - unless C(modprobe ip_vs) fails
    in its container, which it does without the node's C(/lib/modules) mounted. A changed pod
    template reaches a node when its pod is next replaced (at once for every node with the
    C(RollingUpdate) strategy).
  - Every named node is checked for a kube-proxy pod before anything is deleted.
  - Check mode reports what would be restarted and deletes nothing (a DaemonSet change is sent
    with server-side dry-run).
extends_documentation_fragment:
  - kubeipvs.node.attributes.api
  - kubeipvs.node.attributes
  - kubeipvs.node.k8s_auth
options:
  namespace:
    description: Namespace of the DaemonSet and its pods.
    type: str
    default: kube-system
  daemonset_name:
    description: Name of the kube-proxy DaemonSet.
    type: str
    default: kube-proxy
  label_selector:
    description: Label selector of the kube-proxy pods.
    type: str
    default: k8s-app=kube-proxy
  nodes:
    description: Nodes to restart kube-proxy on, in this order.
    type: list
    elements: str
    default: []
  all_nodes:
    description: Restart kube-proxy on every node that runs one, all at once.
    type: bool
    default: false
  update_strategy:
    description:
      - Set the DaemonSet's C(spec.updateStrategy.type) before restarting anything.
      - V(restore) sets the strategy O(remember_update_strategy) kept and removes the annotation; without
        the annotation nothing changes. V(RollingUpdate) removes it too.
    type: str
    choices: [OnDelete, RollingUpdate, restore]
  remember_update_strategy:
    description:
      - With O(update_strategy=OnDelete), when that changes the strategy, record the strategy found (its
        C(rollingUpdate) settings too) in the DaemonSet's annotation C(kubeipvs.node/update-strategy-before),
        replacing one left from an earlier change (the strategy was set back since) - kept in the cluster, so it survives a run that stops half-way however
        it stops, for a later O(update_strategy=restore). The mode_switch role uses it.
    type: bool
    default: false
  node_kernel_modules:
    description:
      - Whether kube-proxy's containers see the node's kernel modules.
      - V(false) removes every mount of a hostPath volume at or in C(/lib/modules) or
        C(/usr/lib/modules) (and the volume, when nothing else mounts it); a hostPath mounted over
        them (C(/), C(/usr), C(/lib)) is an error. Without them, IPVS mode needs its modules loaded
        by the node (M(kubeipvs.node.kernel_module), role C(kubeipvs.node.ipvs_node)).
      - V(true) mounts the node's C(/lib/modules) read-only into the container named C(kube-proxy)
        as kubeadm does (volume C(lib-modules)).
      - Unset, the pod template is left as it is.
    type: bool
  timeout:
    description: Seconds to wait for the replacement pod on one node (on all nodes, with O(all_nodes)).
    type: int
    default: 300
  poll_interval:
    description: Seconds between two looks at the pods while waiting.
    type: float
    default: 2.0
seealso:
  - module: kubeipvs.node.kube_proxy_config
  - module: kubeipvs.node.kube_proxy
"""

EXAMPLES = r"""
- name: Roll a ConfigMap change out one node at a time
  kubeipvs.node.kube_proxy_restart:
    kubeconfig: /etc/kubernetes/admin.conf
    update_strategy: OnDelete
    nodes: "{{ groups['k8s_nodes'] }}"
    timeout: 120
  delegate_to: localhost
  run_once: true

- name: Restart kube-proxy everywhere at once
  kubeipvs.node.kube_proxy_restart:
    all_nodes: true
"""

RETURN = r"""
restarted:
  description:
    - One item per node - the deleted pods, the new Ready pod and the seconds it took.
    - In check mode nothing is deleted; C(ready) then tells whether the node's current pods are Ready.
  returned: success
  type: list
  elements: dict
  sample: [{node: node1, old_pods: [kube-proxy-7xk2p], new_pod: kube-proxy-q9z4d, seconds: 4.2}]
update_strategy:
  description:
    - The DaemonSet's update strategy type before and after, and the strategy the annotation
      C(kubeipvs.node/update-strategy-before) holds after the call (C(remembered), null when none).
  returned: success
  type: dict
  sample: {before: RollingUpdate, after: OnDelete, remembered: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}}
node_kernel_modules:
  description:
    - Whether kube-proxy's containers see the node's kernel modules, before and after, and the
      mounts (C(container:mountPath)) they see them through.
  returned: success
  type: dict
  sample: {before: true, after: false, mounts_before: ["kube-proxy:/lib/modules"]}
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubeipvs.node.plugins.module_utils._errors import KubeIpvsError, ansible_module, run_module
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s._client import AUTH_ARG_SPEC, client_from_module
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_manifests import (
    node_kernel_modules,
    with_node_kernel_modules,
)
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._text import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    check_text,
)

EVENTS_SHOWN = 10
# Where the strategy a change to OnDelete found is kept, for ``update_strategy: restore``.
STRATEGY_ANNOTATION = "kubeipvs.node/update-strategy-before"
STRATEGY_TYPES = ("OnDelete", "RollingUpdate")
ROLLING_UPDATE_KEYS = ("maxUnavailable", "maxSurge")


def pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def describe_pod(client, pod):
    """What a person debugging a stuck pod looks at first: phase, conditions, containers, events."""
    metadata, status = pod["metadata"], pod.get("status") or {}
    events = client.list("Event", metadata["namespace"],
                         field_selector=f"involvedObject.kind=Pod,involvedObject.name={metadata['name']}")
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return {
        "name": metadata["name"], "uid": metadata["uid"], "node": (pod.get("spec") or {}).get("nodeName"),
        "phase": status.get("phase"),
        "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message") if c.get(k) is not None}
                       for c in status.get("conditions") or []],
        "container_statuses": [{"name": c.get("name"), "ready": c.get("ready"), "restart_count": c.get("restartCount"),
                                "state": c.get("state"), "last_state": c.get("lastState")}
                               for c in status.get("containerStatuses") or []],
        "events": [{"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
                    "count": e.get("count"), "last_timestamp": e.get("lastTimestamp")}
                   for e in events[-EVENTS_SHOWN:]],
    }


def container_text(container):
    state = container["state"] or {}
    phase = next(iter(state), "unknown")
    reason = (state.get(phase) or {}).get("reason")
    return f"{container['name']} {phase}{' (' + reason + ')' if reason else ''}, restarts {container['restart_count']}"


def summary(description):
    containers = "; ".join(container_text(c) for c in description["container_statuses"]) or "none reported"
    events = "; ".join(f"{e['reason']}: {e['message']}" for e in description["events"][-3:]) or "none"
    return f"pod {description['name']} is {description['phase']}, containers: {containers}, last events: {events}"


class Restarter:
    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params

    def pods_on(self, node):
        return self.client.list("Pod", self.params["namespace"], label_selector=self.params["label_selector"],
                                field_selector=f"spec.nodeName={node}")

    def restart(self, nodes, old_pods):
        """Delete the old pods on ``nodes`` and wait until every node has a new Ready pod."""
        started = time.monotonic()
        for node in nodes:
            for pod in old_pods[node]:
                try:
                    self.client.delete("Pod", pod["metadata"]["name"], self.params["namespace"])
                except KubeIpvsError as error:
                    if getattr(error, "status", None) != 404:  # already gone: fine
                        raise
        deadline = started + self.params["timeout"]
        waiting = list(nodes)
        new_pods = {}
        while waiting:
            for node in list(waiting):
                old_uids = {p["metadata"]["uid"] for p in old_pods[node]}
                fresh = [p for p in self.pods_on(node) if p["metadata"]["uid"] not in old_uids]
                ready = [p for p in fresh if pod_ready(p)]
                if ready:
                    new_pods[node] = ready[0]["metadata"]["name"]
                    waiting.remove(node)
                elif time.monotonic() >= deadline:
                    self.fail_timeout(node, old_pods[node], fresh)
            if waiting:
                time.sleep(self.params["poll_interval"])
        seconds = round(time.monotonic() - started, 2)
        return [{"node": node, "old_pods": [p["metadata"]["name"] for p in old_pods[node]],
                 "new_pod": new_pods[node], "seconds": seconds} for node in nodes]

    def fail_timeout(self, node, old, fresh):
        old_names = ", ".join(p["metadata"]["name"] for p in old)
        if not fresh:
            raise KubeIpvsError(f"kube-proxy on node {node}: no replacement for {old_names} appeared within "
                                f"{self.params['timeout']}s; check the DaemonSet "
                                f"{self.params['namespace']}/{self.params['daemonset_name']} and the node",
                                node=node, pod=None)
        newest = max(fresh, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        description = describe_pod(self.client, newest)
        raise KubeIpvsError(f"kube-proxy on node {node} not Ready {self.params['timeout']}s after deleting "
                            f"{old_names}: {summary(description)}", node=node, pod=description)


def run(module):
    params = module.params
    if params["timeout"] <= 0 or params["poll_interval"] <= 0:
        raise KubeIpvsError("timeout and poll_interval must be greater than 0")
    if not params["poll_interval"] <= 3600:  # NaN compares false both ways; an infinity would never end a sleep
        raise KubeIpvsError(f"poll_interval must be at most 3600 seconds, got {params['poll_interval']}")
    DNS1123_LABEL.check(params["namespace"], "namespace")
    DNS1123_SUBDOMAIN.check(params["daemonset_name"], "daemonset_name")
    check_text(params["label_selector"], "label_selector")
    for node in params["nodes"]:
        DNS1123_SUBDOMAIN.check(node, "nodes")
    if params["all_nodes"] and params["nodes"]:
        raise KubeIpvsError("set either nodes or all_nodes, not both")
    if len(set(params["nodes"])) != len(params["nodes"]):
        raise KubeIpvsError(f"nodes lists a node twice: {params['nodes']}")
    client = client_from_module(module)
    namespace, name = params["namespace"], params["daemonset_name"]
    daemonset = client.get("DaemonSet", name, namespace)
    if daemonset is None:
        raise KubeIpvsError(f"DaemonSet {namespace}/{name} not found; deploy kube-proxy first "
                            "(kubeipvs.node.kube_proxy) or set namespace/daemonset_name")
    restarter = Restarter(module, client)
    pods = client.list("Pod", namespace, label_selector=params["label_selector"])
    by_node = {}
    for pod in pods:
        by_node.setdefault((pod.get("spec") or {}).get("nodeName"), []).append(pod)
    running = sorted(n for n in by_node if n)
    nodes = running if params["all_nodes"] else params["nodes"]
    missing = [n for n in nodes if n not in by_node]
    if missing:
        raise KubeIpvsError(f"no pod matching {params['label_selector']} in {namespace} on node(s) "
                            f"{', '.join(missing)}; nodes running one: {', '.join(running) or 'none'}")

    strategy = (daemonset.get("spec") or {}).get("updateStrategy") or {}
    strategy_before = strategy.get("type", "RollingUpdate")
    annotations = (daemonset.get("metadata") or {}).get("annotations") or {}
    remembered = remembered_strategy(annotations, f"DaemonSet {namespace}/{name}")
    strategy_update, annotation = strategy_change(params["update_strategy"], strategy, strategy_before, remembered,
                                                  params["remember_update_strategy"])
    strategy_after = strategy_update["type"] if strategy_update else strategy_before
    pod_spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    modules_before = node_kernel_modules(pod_spec)
    new_pod_spec = pod_spec
    if params["node_kernel_modules"] is not None:
        try:
            new_pod_spec = with_node_kernel_modules(pod_spec, params["node_kernel_modules"])
        except ValueError as error:
            raise KubeIpvsError(f"DaemonSet {namespace}/{name}: {error}") from None
    patch = {}
    if strategy_update:
        patch["updateStrategy"] = strategy_update
    if new_pod_spec != pod_spec:
        # Lists replace whole in a merge patch; the resourceVersion makes the write fail, not
        # clobber, when someone changed the DaemonSet since it was read.
        patch["template"] = {"spec": {key: new_pod_spec.get(key) or None
                                      for key in ("initContainers", "containers", "volumes")
                                      if new_pod_spec.get(key) != pod_spec.get(key)}}
    metadata = {"resourceVersion": daemonset["metadata"]["resourceVersion"]}
    if annotation is not False:
        metadata["annotations"] = {STRATEGY_ANNOTATION: annotation}  # None removes it (merge patch)
    if patch or annotation is not False:
        client.patch("DaemonSet", name, {"metadata": metadata, "spec": patch}, namespace, dry_run=module.check_mode)
    modules_after = node_kernel_modules(new_pod_spec)
    remembered_after = remembered if annotation is False else (None if annotation is None else json.loads(annotation))

    output = dict(changed=bool(patch) or annotation is not False or bool(nodes),
                  update_strategy={"before": strategy_before, "after": strategy_after, "remembered": remembered_after},
                  node_kernel_modules={"before": bool(modules_before), "after": bool(modules_after),
                                       "mounts_before": modules_before})
    if module._diff:
        output["diff"] = {"before": {"update_strategy": strategy_before, "node_kernel_modules": modules_before,
                                     "restarted_nodes": []},
                          "after": {"update_strategy": strategy_after, "node_kernel_modules": modules_after,
                                    "restarted_nodes": list(nodes)}}
    if module.check_mode:
        output["restarted"] = [{"node": n, "old_pods": [p["metadata"]["name"] for p in by_node[n]],
                                "ready": all(pod_ready(p) for p in by_node[n]), "new_pod": None, "seconds": 0}
                               for n in nodes]
        return output
    restarted = []
    groups = [nodes] if params["all_nodes"] else [[n] for n in nodes]
    for group in groups:
        # Re-read per node (a pod may have been replaced since the first look); a node whose pod
        # is gone right now keeps the first look's pods, so a pod that was there all along is
        # never mistaken for the replacement.
        old_pods = {n: restarter.pods_on(n) or by_node[n] for n in group}
        try:
            restarted.extend(restarter.restart(group, old_pods))
        except KubeIpvsError as error:
            error.details["restarted"] = restarted
            raise
    output["restarted"] = restarted
    return output


def remembered_strategy(annotations, owner):
    """The update strategy the annotation holds (None without one), checked: anyone may write an
    annotation, and what it holds is written back into the DaemonSet's spec."""
    text = annotations.get(STRATEGY_ANNOTATION)
    if text is None:
        return None
    fix = f"; set {owner}'s spec.updateStrategy yourself and remove the annotation {STRATEGY_ANNOTATION}"
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict) or value.get("type") not in STRATEGY_TYPES or set(value) - {"type", "rollingUpdate"}:
        raise KubeIpvsError(f"{owner}: annotation {STRATEGY_ANNOTATION} holds {str(text)[:200]!r}, not an update "
                            f"strategy (a JSON object with type {' or '.join(STRATEGY_TYPES)}){fix}")
    rolling = value.get("rollingUpdate")
    if rolling is not None and (value["type"] != "RollingUpdate" or not isinstance(rolling, dict)
                                or set(rolling) - set(ROLLING_UPDATE_KEYS)
                                or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in rolling.values())):
        raise KubeIpvsError(f"{owner}: annotation {STRATEGY_ANNOTATION} holds rollingUpdate {rolling!r}; it may only "
                            f"hold {' and '.join(ROLLING_UPDATE_KEYS)} as numbers or percentages, with type RollingUpdate{fix}")
    return value


def strategy_change(requested, strategy, strategy_before, remembered, remember):
    """(the ``spec.updateStrategy`` to write or None, the annotation's new text - None to remove it,
    False to leave it as it is) for ``update_strategy: requested``."""
    if requested == "restore":
        if remembered is None:
            return None, False
        return (dict(remembered, rollingUpdate=remembered.get("rollingUpdate")) if remembered != strategy else None), None
    if requested is None or requested == strategy_before:
        return None, (None if requested == "RollingUpdate" and remembered is not None else False)
    if requested == "OnDelete":  # rollingUpdate only means something with RollingUpdate
        found = {key: value for key, value in strategy.items() if key in ("type", "rollingUpdate") and value is not None}
        # An annotation left while the strategy is not OnDelete is stale (set back by hand since):
        # the strategy found now is the one to keep.
        return ({"type": "OnDelete", "rollingUpdate": None},
                json.dumps(dict(found, type=strategy_before), sort_keys=True) if remember else False)
    return {"type": requested}, (None if remembered is not None else False)


def main():
    argument_spec = dict(
        AUTH_ARG_SPEC,
        namespace=dict(type="str", default="kube-system"),
        daemonset_name=dict(type="str", default="kube-proxy"),
        label_selector=dict(type="str", default="k8s-app=kube-proxy"),
        nodes=dict(type="list", elements="str", default=[]),
        all_nodes=dict(type="bool", default=False),
        update_strategy=dict(type="str", choices=["OnDelete", "RollingUpdate", "restore"]),
        remember_update_strategy=dict(type="bool", default=False),
        node_kernel_modules=dict(type="bool"),
        timeout=dict(type="int", default=300),
        poll_interval=dict(type="float", default=2.0),
    )
    module = ansible_module(AnsibleModule, argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
