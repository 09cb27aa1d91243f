# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller's cost of a fleet: kube_proxy_state for HOSTS inventory hosts of a SERVICES-Service
cluster, through ansible-playbook, against a real API server (the lab's control plane, started on
this host for the run and stopped after it).

Per mode, side by side in one run:
- the floor: the collection's API client listing the Services and EndpointSlices once (a Python
  of its own; CPU seconds and peak RSS);
- one call per node, as before ``nodes``: a play whose task runs once per host, for the first host
  and for the first SAMPLE hosts;
- one call for the whole fleet (``nodes``, ``run_once``), as the mode_switch role makes per batch,
  for the first host and for all HOSTS hosts.

What a further node costs each way is the difference between the run for many hosts and the run
for one, divided by the hosts added. CPU is the ansible-playbook run's own and its children's
(user + system, GNU time), peak RSS its largest process's. The node side is not involved: the
hosts are inventory names only, the task runs on the controller (``delegate_to: localhost``), and
every node's state files are written and then removed. The cluster is switch_bench's (every
tenth Service a NodePort), its endpoints spread over the hosts, so each node has endpoints of its
own. Prints a summary and one JSON document."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from _harness import timed
from switch_bench import scale_objects

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import cluster as lab_cluster  # noqa: E402  (tests/lab/cluster.py)
from kube_cluster import AdminApi  # noqa: E402

MODES = ("ipvs", "iptables", "nftables")
PLAY = """
- name: kube_proxy_state for the fleet
  hosts: fleet
  gather_facts: false
  tasks:
    - name: One call per node
      kubeipvs.node.kube_proxy_state:
        kubeconfig: "{{ fleet_kubeconfig }}"
        node_name: "{{ inventory_hostname }}"
        node_ips: "{{ fleet_node.node_ips }}"
        mode: "{{ fleet_mode }}"
        cluster_cidr: 10.244.0.0/16
        dest: "{{ fleet_dest }}/{{ inventory_hostname }}"
      delegate_to: localhost
      when: not fleet_together | bool

    - name: One call for every node
      kubeipvs.node.kube_proxy_state:
        kubeconfig: "{{ fleet_kubeconfig }}"
        nodes: "{{ ansible_play_hosts | map('extract', hostvars, 'fleet_node') | list }}"
        mode: "{{ fleet_mode }}"
        cluster_cidr: 10.244.0.0/16
        dest: "{{ fleet_dest }}"
      delegate_to: localhost
      run_once: true
      when: fleet_together | bool
"""
FLOOR = """
import json, resource, sys
from ansible_collections.kubeipvs.node.plugins.module_utils.k8s._client import build_configuration, KubeClient
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started = cpu()
client = KubeClient(build_configuration({"kubeconfig": sys.argv[1]}))
services, slices = client.list("Service"), client.list("EndpointSlice")
print(json.dumps({"services": len(services), "endpoint_slices": len(slices), "cpu_seconds": round(cpu() - started, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def host_name(index):
    return f"fleet-{index:04d}"


def create(plane, objects, connections=8):
    """Create ``objects`` over a few kept-alive connections at once."""
    paths = {"Service": "/api/v1/namespaces/default/services",
             "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"}
    queue, failures = list(reversed(objects)), []

    def work():
        api = AdminApi(plane.server, plane.pki)
        try:
            while queue and not failures:
                try:
                    obj = queue.pop()
                except IndexError:
                    return
                status, answer = api.call("POST", paths[obj["kind"]], obj)
                if status != 201:
                    failures.append(f"{obj['kind']} {obj['metadata']['name']}: {status} {str(answer)[:200]}")
        finally:
            api.close()
    workers = [threading.Thread(target=work) for _worker in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise SystemExit(f"seeding the cluster failed: {failures[:3]}")


def inventory(path, hosts):
    path.write_text(json.dumps({"fleet": {"hosts": {
        host_name(index): {"ansible_connection": "local",
                           "fleet_node": {"name": host_name(index),
                                          "node_ips": [f"192.168.{index // 250}.{index % 250 + 1}"]}}
        for index in range(hosts)}}}))


def run_play(folder, env, kubeconfig, mode, together, limit):
    with tempfile.TemporaryDirectory(prefix="kubeipvs-fleet-state-") as dest:
        args = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(folder / "inventory.json"),
                str(folder / "play.yml"), "--limit", limit, "--forks", "5",
                "-e", json.dumps({"fleet_kubeconfig": str(kubeconfig), "fleet_mode": mode, "fleet_dest": dest,
                                  "fleet_together": together})]
        measured, _output = timed(args, env)
        measured["nodes_written"] = len(os.listdir(dest))
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--sample", type=int, default=3, help="hosts run one call each (the per-node baseline)")
    options = parser.parse_args()
    if not 2 <= options.sample <= options.hosts <= 254:
        parser.error("--sample must be at least 2 and --hosts at least --sample and at most 254")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
               PYTHONPATH=str(ROOT / ".build" / "collections"))
    result = {"services": options.services, "endpoints_per_service": options.endpoints, "hosts": options.hosts,
              "sample": options.sample, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="kubeipvs-fleet-") as folder:
        folder = Path(folder)
        (folder / "play.yml").write_text(PLAY)
        inventory(folder / "inventory.json", options.hosts)
        plane = lab_cluster.ControlPlane(root=folder / "k8s")
        try:
            plane.up()
            hosts = [host_name(index) for index in range(options.hosts)]
            create(plane, scale_objects(options.services, options.endpoints, hosts, prefix="fleet"))
            floor, output = timed([sys.executable, "-c", FLOOR, str(plane.admin_kubeconfig)], env)
            result["floor"] = dict(json.loads(output), peak_rss_mib=floor["peak_rss_mib"])
            print(f"{options.services} Services x {options.endpoints} endpoints, {options.hosts} hosts; "
                  f"floor (one list of each): {result['floor']['cpu_seconds']} s CPU, "
                  f"{result['floor']['peak_rss_mib']} MiB", flush=True)
            first, sample = "fleet[0]", f"fleet[0:{options.sample - 1}]"
            for mode in MODES:
                runs = {(together, limit): run_play(folder, env, plane.admin_kubeconfig, mode, together, limit)
                        for together, limit in ((False, first), (False, sample), (True, first), (True, "fleet"))}
                written = {key: run["nodes_written"] for key, run in runs.items()}
                if list(written.values()) != [1, options.sample, 1, options.hosts]:
                    raise SystemExit(f"{mode}: not every node's files were written: {written}")
                # what one more node adds: the difference between a run for many nodes and for one
                alone = (runs[False, sample]["cpu_seconds"] - runs[False, first]["cpu_seconds"]) / (options.sample - 1)
                together = (runs[True, "fleet"]["cpu_seconds"] - runs[True, first]["cpu_seconds"]) / (options.hosts - 1)
                fleet = runs[True, "fleet"]
                result["modes"][mode] = {"one_call_per_node": runs[False, sample], "one_call_per_node_one_host":
                                         runs[False, first], "one_call_for_all": fleet,
                                         "one_call_for_all_one_host": runs[True, first],
                                         "cpu_per_further_node_alone": round(alone, 2),
                                         "cpu_per_further_node_together": round(together, 2)}
                print(f"  {mode:9} each further node: {alone:5.2f} s CPU with a call of its own, {together:5.2f} s in "
                      f"one call ({alone / max(together, 0.01):.1f}x less) | {options.hosts} nodes in one call: "
                      f"{fleet['cpu_seconds']} s CPU, {fleet['seconds']} s, peak {fleet['peak_rss_mib']} MiB "
                      f"(one node alone: {runs[False, first]['cpu_seconds']} s, "
                      f"{runs[False, first]['peak_rss_mib']} MiB)",
                      flush=True)
        finally:
            plane.down()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
