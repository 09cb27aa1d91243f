# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The DaemonSet controller and the kubelet, as far as the tests need them."""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
import time

from .api import now_rfc3339


class DaemonSetController:
    """Keeps one pod per matching node for every DaemonSet, like kube-controller-manager + kubelet.

    A missing pod is created ``recreate_delay`` seconds after it went missing; a new pod becomes
    Ready ``ready_delay`` seconds later, unless its node is in ``faults.never_ready_nodes`` (then
    its container crash-loops). RollingUpdate replaces outdated pods one at a time; OnDelete only
    gives the new template to pods created after a deletion.
    """

    def __init__(self, server, recreate_delay, ready_delay):
        self.server = server
        self.store = server.store
        self.recreate_delay = recreate_delay
        self.ready_delay = ready_delay
        self.missing_since = {}  # (ds uid, node) -> time the pod went missing
        self.ready_at = {}       # pod uid -> time it becomes ready
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="daemonset-controller", daemon=True)

    def run(self):
        while not self.stop_event.wait(0.02):
            with self.store.lock:
                for daemonset in self.store.list("DaemonSet"):
                    self.reconcile(daemonset)
                self.progress_pods()

    def reconcile(self, daemonset):
        now = time.monotonic()
        spec, metadata = daemonset["spec"], daemonset["metadata"]
        revision = template_hash(spec["template"])
        node_selector = spec["template"]["spec"].get("nodeSelector") or {}
        nodes = [n["metadata"]["name"] for n in self.store.list("Node")
                 if all((n["metadata"].get("labels") or {}).get(k) == v for k, v in node_selector.items())]
        pods = [p for p in self.store.list("Pod", metadata["namespace"])
                if any(ref.get("uid") == metadata["uid"] for ref in p["metadata"].get("ownerReferences", []))]
        by_node = {p["spec"].get("nodeName"): p for p in pods}
        for node in nodes:
            key = (metadata["uid"], node)
            if node in by_node:
                self.missing_since.pop(key, None)
                continue
            since = self.missing_since.setdefault(key, now)
            if now - since >= self.recreate_delay:
                self.create_pod(daemonset, node, revision)
                self.missing_since.pop(key, None)
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        outdated = [p for p in pods if p["metadata"]["labels"].get("controller-revision-hash") != revision]
        settled = len(pods) == len(nodes) and all(pod_ready(p) for p in pods)
        if strategy == "RollingUpdate" and outdated and settled:
            victim = outdated[0]
            self.event(victim, "Normal", "Killing", "Stopping container kube-proxy")
            self.store.delete("Pod", victim["metadata"]["namespace"], victim["metadata"]["name"])
        pods = [p for p in self.store.list("Pod", metadata["namespace"])
                if any(ref.get("uid") == metadata["uid"] for ref in p["metadata"].get("ownerReferences", []))]
        status = {
            "currentNumberScheduled": len(pods), "desiredNumberScheduled": len(nodes), "numberMisscheduled": 0,
            "numberReady": sum(1 for p in pods if pod_ready(p)),
            "numberAvailable": sum(1 for p in pods if pod_ready(p)),
            "updatedNumberScheduled": sum(1 for p in pods
                                          if p["metadata"]["labels"].get("controller-revision-hash") == revision),
            "observedGeneration": metadata.get("generation", 1),
        }
        if daemonset.get("status") != status:
            daemonset["status"] = status
            self.store.put(daemonset)

    def create_pod(self, daemonset, node, revision):
        template = copy.deepcopy(daemonset["spec"]["template"])
        namespace = daemonset["metadata"]["namespace"]
        name = f'{daemonset["metadata"]["name"]}-{secrets.token_hex(3)[:5]}'
        labels = dict(template.get("metadata", {}).get("labels") or {}, **{"controller-revision-hash": revision})
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "controller": True,
                                              "blockOwnerDeletion": True, "name": daemonset["metadata"]["name"],
                                              "uid": daemonset["metadata"]["uid"]}]},
            "spec": dict(template.get("spec") or {}, nodeName=node),
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]},
        }
        pod = self.store.put(pod)
        self.ready_at[pod["metadata"]["uid"]] = time.monotonic() + self.ready_delay
        self.event(pod, "Normal", "Scheduled", f"Successfully assigned {namespace}/{name} to {node}",
                   component="default-scheduler")

    def progress_pods(self):
        now = time.monotonic()
        for pod in self.store.list("Pod"):
            uid = pod["metadata"]["uid"]
            due = self.ready_at.get(uid)
            if due is None or now < due:
                continue
            node = pod["spec"].get("nodeName")
            image = pod["spec"]["containers"][0]["image"]
            container = pod["spec"]["containers"][0]["name"]
            if node in self.server.faults.never_ready_nodes:
                restarts = (pod["status"].get("containerStatuses") or [{}])[0].get("restartCount", -1) + 1
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "PodScheduled", "status": "True"},
                                   {"type": "Initialized", "status": "True"},
                                   {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                                    "message": f"containers with unready status: [{container}]"},
                                   {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                    "message": f"containers with unready status: [{container}]"}],
                    "containerStatuses": [{"name": container, "image": image, "ready": False,
                                           "restartCount": restarts, "started": False,
                                           "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                                 "message": "back-off restarting failed container"}},
                                           "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
                }
                self.store.put(pod)
                self.event(pod, "Warning", "BackOff", f"Back-off restarting failed container {container} in pod "
                           f"{pod['metadata']['name']}_{pod['metadata']['namespace']}({uid})")
                self.ready_at[uid] = now + max(self.ready_delay, 0.5)
                continue
            pod["status"] = {
                "phase": "Running", "hostIP": "192.0.2.1", "startTime": now_rfc3339(),
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now_rfc3339()}
                               for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                "containerStatuses": [{"name": container, "image": image, "ready": True, "restartCount": 0,
                                       "started": True, "state": {"running": {"startedAt": now_rfc3339()}}}],
            }
            self.store.put(pod)
            del self.ready_at[uid]
            for reason, message in (("Pulled", f'Container image "{image}" already present on machine'),
                                    ("Created", f"Created container {container}"),
                                    ("Started", f"Started container {container}")):
                self.event(pod, "Normal", reason, message)

    def event(self, pod, event_type, reason, message, component="kubelet"):
        metadata = pod["metadata"]
        stamp = now_rfc3339()
        for old in self.store.list("Event", metadata["namespace"]):
            # The kubelet's recorder aggregates a repeated event into one with a count.
            if (old["involvedObject"].get("uid"), old["reason"], old["message"]) == (metadata["uid"], reason, message):
                old["count"] += 1
                old["lastTimestamp"] = stamp
                self.store.put(old)
                return
        self.store.put({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f'{metadata["name"]}.{secrets.token_hex(8)}', "namespace": metadata["namespace"]},
            "involvedObject": {"kind": "Pod", "name": metadata["name"], "namespace": metadata["namespace"],
                               "uid": metadata["uid"], "apiVersion": "v1"},
            "type": event_type, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": component, "host": pod["spec"].get("nodeName", "")},
        })


def template_hash(template):
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
