# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rolling switch at scale, on the running lab (make bench-switch boots it): the demo cluster
plus SERVICES Services of ENDPOINTS endpoints each (10% NodePort), site.yml to IPVS mode, canary
requests to a ClusterIP on every node, then playbooks/switch_mode.yml to nftables mode and back to
IPVS mode. Per switch: each node's seconds from restart to Ready and to "only the target mode
left" (the switch's own report) and its slowest tasks, the playbook's wall time and its largest
process's peak RSS on the controller; kube_proxy_state alone per mode (wall, CPU, peak RSS); the canary requests per
node and step. Prints one JSON document."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _harness import timed

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("KUBEIPVS_LAB_STATE", ROOT / ".lab"))
SETUP, CANARIES = ROOT / "bench" / "switch_bench_setup.yml", ROOT / "bench" / "switch_bench_canaries.yml"
NODES = ("node1", "node2", "node3")
TASKS_SHOWN = 10  # per node and switch, the slowest tasks (bench/callbacks/kubeipvs_task_times.py)


def scale_objects(services, endpoints, nodes=NODES, prefix="scale"):
    """``services`` Services (ClusterIPs from 10.100.0.0/14, every tenth a NodePort from 30100) with
    one EndpointSlice of ``endpoints`` endpoints each, spread over ``nodes`` (at most 254), each
    endpoint in its node's pod range 10.244.<node's number>.0/24."""
    objects = []
    for index in range(services):
        name = f"{prefix}-{index:05d}"
        spec = {"type": "NodePort" if index % 10 == 0 else "ClusterIP",
                "clusterIP": f"10.{100 + index // 65024}.{index // 254 % 256}.{index % 254 + 1}",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        if index % 10 == 0:
            spec["ports"][0]["nodePort"] = 30100 + index // 10
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name, "namespace": "default"}, "spec": spec})
        members = []
        for number in range(endpoints):
            node = (index + number) % len(nodes)
            members.append({"addresses": [f"10.244.{node + 1}.{20 + (index * endpoints + number) % 230}"],
                            "nodeName": nodes[node], "conditions": {"ready": True}})
        objects.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": f"{name}-bench", "namespace": "default",
                                     "labels": {"kubernetes.io/service-name": name,
                                                "endpointslice.kubernetes.io/managed-by": "kubeipvs-bench"}},
                        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                        "endpoints": members})
    return objects


def playbook(path, env, **extra):
    args = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(STATE / "inventory.yml"), str(path),
            "-e", f"switch_bench_state={STATE}",
            "-e", f"kube_proxy_kubeconfig={STATE / 'k8s' / 'admin.kubeconfig'}"]
    for key, value in extra.items():
        args += ["-e", f"{key}={value}"]
    return timed(args, env)


def switch(env, target):
    report_file = STATE / f"bench-switch-{target}.json"
    args = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(STATE / "inventory.yml"),
            str(ROOT / "playbooks" / "switch_mode.yml"),
            "-e", f"kube_proxy_kubeconfig={STATE / 'k8s' / 'admin.kubeconfig'}",
            "-e", f"kube_proxy_target_mode={target}", "-e", "mode_switch_cluster_cidr=10.244.0.0/16",
            "-e", '{"mode_switch_canary_urls": ["http://10.96.0.10/"]}',
            "-e", f"mode_switch_report_file={report_file}"]
    task_times = STATE / f"bench-task-times-{target}.json"
    env = dict(env, ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "bench" / "callbacks"),
               ANSIBLE_CALLBACKS_ENABLED="kubeipvs_task_times", KUBEIPVS_TASK_TIMES=str(task_times))
    measured, _output = timed(args, env)
    report = json.loads(report_file.read_text())
    keys = ("node", "status", "from", "seconds_to_ready", "seconds_to_target_only", "cluster_ip_ports")
    measured["nodes"] = [{key: node.get(key) for key in keys} for node in report["nodes"]]
    seconds = json.loads(task_times.read_text()) if task_times.exists() else {}
    for node in measured["nodes"]:  # where each node's time went: its slowest tasks
        slowest = sorted(seconds.get(node["node"], {}).items(), key=lambda item: -item[1])[:TASKS_SHOWN]
        node["slowest_tasks"] = dict(slowest)
    return measured


def kube_proxy_state(env, mode):
    """The controller's computation for one node alone, as the switch runs it (localhost, state files)."""
    with tempfile.TemporaryDirectory(prefix="kubeipvs-bench-state-") as dest:
        args = [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-c", "local", "-m",
                "kubeipvs.node.kube_proxy_state",
                "-a", json.dumps({"kubeconfig": str(STATE / "k8s" / "admin.kubeconfig"), "node_name": "node1",
                                  "mode": mode, "cluster_cidr": "10.244.0.0/16", "dest": dest})]
        measured, output = timed(args, env)
    # the one-line form: "localhost | SUCCESS => {...}"
    _host, _arrow, document = output.partition("=>")
    try:
        measured["counts"] = json.JSONDecoder().raw_decode(document.strip())[0].get("counts")
    except ValueError:
        measured["counts"] = None
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--endpoints", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    objects_file = STATE / "bench-services.json"
    objects_file.write_text(json.dumps(scale_objects(args.services, args.endpoints)))

    result = {"services": args.services, "endpoints_per_service": args.endpoints, "nodes": len(NODES)}
    partial = STATE / "bench-switch-partial.json"

    def record(key, value):  # kept as it comes: a step that fails later loses nothing measured
        result[key] = value
        partial.write_text(json.dumps(result, indent=2))

    record("setup_site_yml", playbook(SETUP, env, switch_bench_objects=objects_file)[0])
    record("kube_proxy_state", {mode: kube_proxy_state(env, mode) for mode in ("ipvs", "nftables")})
    playbook(CANARIES, env, switch_bench_canaries="start")
    try:
        record("switch_to_nftables", switch(env, "nftables"))
        playbook(CANARIES, env, switch_bench_canaries="mark")
        record("switch_to_ipvs", switch(env, "ipvs"))
    finally:
        playbook(CANARIES, env, switch_bench_canaries="stop")
        canaries = {node: json.loads((STATE / f"bench-canary-{node}.json").read_text()) for node in NODES}
        for counts in canaries.values():
            counts.pop("failures", None)
            counts.pop("resends", None)
        record("canaries", canaries)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
