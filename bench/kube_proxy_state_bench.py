# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube_proxy_state's rendering on the controller, per mode, against the floor of reading the cluster.

A synthetic cluster of N Services (10% NodePort) x E ready endpoints spread over 3 nodes, written as
the API's list responses (JSON). For each mode, in a fresh Python process each: the floor - decoding
those two lists, which every run pays - and the module's ``render`` of node1 from the decoded
lists (CPU seconds, and the process's peak RSS). Prints CPU ratios render / floor, and the size of
the task's result inline against its size with state files (``dest``) and the files' own size.
No API server, no node: this is the controller-side work of one node's kube_proxy_state task
before Ansible handles its result."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[1] / ".build" / "collections"
MODES = ("ipvs", "iptables", "nftables")

MEASURE = r"""
import json, resource, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
services_file, slices_file, what = sys.argv[1:4]
import gc
gc.disable()  # as the module runs: the lists, the model and the render with the collector paused
started = cpu()
with open(services_file) as f:
    services = json.load(f)["items"]
with open(slices_file) as f:
    slices = json.load(f)["items"]
floor = cpu() - started
render_cpu = 0.0
if what != "floor":
    from ansible_collections.kubeipvs.node.plugins.modules.kube_proxy_state import render
    params = {"mode": what, "node_name": "node1", "scheduler": "rr", "ip_families": [], "node_port_addresses": None,
              "cluster_cidr": "10.244.0.0/16", "masquerade_bit": 14, "node_port_cidrs": [],
              "localhost_node_ports": True, "masquerade_all": False}
    started = cpu()
    state = render(params, services, slices, ["192.168.0.1"], ["10.96.0.0/12"])
    render_cpu = cpu() - started
    assert state["cluster_ip_ports"], state["counts"]
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sizes = {}
if what != "floor":
    # what the task's result carries inline, against state files (kube_proxy_state's dest)
    import os, tempfile
    from ansible_collections.kubeipvs.node.plugins.modules.kube_proxy_state import to_state_files
    sizes["result_inline_mb"] = len(json.dumps(state)) / 1e6
    with tempfile.TemporaryDirectory() as dest:
        started = cpu()
        with_files = to_state_files(state, dest)
        sizes["files_cpu"] = cpu() - started
        sizes["result_with_files_mb"] = len(json.dumps(with_files)) / 1e6
        sizes["files_mb"] = sum(os.path.getsize(os.path.join(dest, name)) for name in os.listdir(dest)) / 1e6
print(json.dumps(dict(sizes, floor_cpu=floor, render_cpu=render_cpu, peak_rss_mb=peak_rss_mb)))
"""

# kube_proxy_state with ``nodes``: the cluster built once, then each node rendered and written to its files.
MEASURE_NODES = r"""
import json, os, resource, sys, tempfile
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
services_file, slices_file, mode, nodes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import gc
gc.disable()  # as the module runs (node/_collector.py)
with open(services_file) as f:
    services = json.load(f)["items"]
with open(slices_file) as f:
    slices = json.load(f)["items"]
from ansible_collections.kubeipvs.node.plugins.module_utils.pure._kube_proxy_state import Cluster
from ansible_collections.kubeipvs.node.plugins.modules.kube_proxy_state import render, to_state_files
started = cpu()
cluster = Cluster(services, slices)
del services, slices
cluster_cpu = cpu() - started
per_node = []
with tempfile.TemporaryDirectory() as dest:
    for index in range(nodes):
        name = f"node{index % 3 + 1}" if index < 3 else f"node{index + 1}"  # the bench's endpoints are on node1-3
        params = {"mode": mode, "node_name": name, "scheduler": "rr", "ip_families": [], "node_port_addresses": None,
                  "cluster_cidr": "10.244.0.0/16", "masquerade_bit": 14, "node_port_cidrs": [],
              "localhost_node_ports": True, "masquerade_all": False}
        started = cpu()
        state = render(params, cluster, None, [f"192.168.{index // 250}.{index % 250 + 1}"], ["10.96.0.0/12"])
        to_state_files(state, os.path.join(dest, name))
        per_node.append(cpu() - started)
        del state
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"cluster_cpu": cluster_cpu, "per_node_cpu": sorted(per_node)[len(per_node) // 2],
                  "nodes_cpu": sum(per_node), "peak_rss_mb": peak_rss_mb}))
"""


def cluster(services, endpoints):
    """The API's list responses for Services and EndpointSlices (one slice per Service)."""
    service_items, slice_items = [], []
    for index in range(services):
        name = f"svc-{index}"
        cluster_ip = f"10.{96 + index // 65536}.{index // 256 % 256}.{index % 256}"
        port = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
        spec = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [port]}
        if index % 10 == 0:
            spec["type"] = "NodePort"
            port["nodePort"] = 30000 + index // 10 % 2768
        service_items.append({"metadata": {"name": name, "namespace": "bench"}, "spec": spec})
        slice_items.append({
            "metadata": {"name": f"{name}-a", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.{128 + (index * endpoints + e) // 65536}."
                                         f"{(index * endpoints + e) // 256 % 256}.{(index * endpoints + e) % 256}"],
                           "nodeName": f"node{e % 3 + 1}", "conditions": {"ready": True}}
                          for e in range(endpoints)]})
    return {"kind": "ServiceList", "items": service_items}, {"kind": "EndpointSliceList", "items": slice_items}


def measure(services_file, slices_file, what, nodes=None):
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    script, extra = (MEASURE, []) if nodes is None else (MEASURE_NODES, [str(nodes)])
    completed = subprocess.run([sys.executable, "-c", script, str(services_file), str(slices_file), what, *extra],
                               capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{what}: {completed.stderr}")
    return json.loads(completed.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=10, help="nodes rendered by one call (kube_proxy_state's nodes)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeipvs-bench-") as folder:
        services, slices = cluster(options.services, options.endpoints)
        services_file, slices_file = Path(folder) / "services.json", Path(folder) / "slices.json"
        services_file.write_text(json.dumps(services))
        slices_file.write_text(json.dumps(slices))
        print(f"{options.services} Services x {options.endpoints} endpoints, {options.repeat} runs each, "
              "median CPU seconds")
        floors = sorted(measure(services_file, slices_file, "floor")["floor_cpu"] for _run in range(options.repeat))
        floor = floors[len(floors) // 2]
        print(f"  {'floor (decode the two lists)':34} {floor:7.2f} s")
        report = {"services": options.services, "endpoints": options.endpoints, "floor_cpu": floor, "modes": {}}
        for mode in MODES:
            runs = sorted((measure(services_file, slices_file, mode) for _run in range(options.repeat)),
                          key=lambda run: run["render_cpu"])
            median = runs[len(runs) // 2]
            report["modes"][mode] = median
            print(f"  {'render, ' + mode:34} {median['render_cpu']:7.2f} s  {median['render_cpu'] / floor:5.1f}x floor"
                  f"  peak RSS {median['peak_rss_mb']:6.0f} MB")
            print(f"  {'':34} result {median['result_inline_mb']:6.1f} MB inline; with dest "
                  f"{median['result_with_files_mb']:5.2f} MB + files {median['files_mb']:5.2f} MB gzip, "
                  f"written in {median['files_cpu']:.2f} s")
            one_node = median["render_cpu"] + median["files_cpu"]
            runs = sorted((measure(services_file, slices_file, mode, options.nodes) for _run in range(options.repeat)),
                          key=lambda run: run["nodes_cpu"])
            many = runs[len(runs) // 2]
            report["modes"][mode]["nodes"] = dict(many, count=options.nodes)
            print(f"  {'':34} {options.nodes} nodes in one call: cluster {many['cluster_cpu']:.2f} s once, then "
                  f"{many['per_node_cpu']:.2f} s per node with its files ({many['per_node_cpu'] / one_node:.2f}x "
                  f"one node alone, {many['per_node_cpu'] / floor:.1f}x floor), peak RSS {many['peak_rss_mb']:.0f} MB")
        print(json.dumps(report))


if __name__ == "__main__":
    main()
