# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS benchmark: kubeipvs.node's library against ipvsadm on the same kernel, as ratios.

Run as root on a lab node (``make bench-ipvs`` does it from the controller), with the collection
on PYTHONPATH:

    PYTHONPATH=/root/c python3 bench/ipvs_bench.py --services 10000 --dests 10 --rounds 3

Every library measurement runs the ipvs_sync module's main() with a real AnsibleModule (the
ansible package is copied onto the node for it): load the JSON services file, normalise and
validate it, read the kernel once, plan, apply in batches, build the result. IPVS
tables belong to a network namespace, so every converge starts in a new, empty namespace of its
own - the node's own table is never touched, and no measurement pays for an earlier one (the
kernel keeps deleted real servers on a per-namespace trash list for minutes, and every real
server added meanwhile walks it). Each step runs as its own process inside its namespace and
reports its wall and CPU seconds (user + system, so the kernel's netlink work counts on both
sides). Only one namespace holds a table at a time: the kernel keeps the IPVS services of every
namespace in one global hash table (kernel 6.1), which every lookup, dump and /proc read walks, so
a table left in another namespace would slow whatever is measured next, and a real node has one.
A namespace is deleted as soon as its steps are done, and the next step waits until the kernel
has finished freeing it (the machine idle). Per round, in this order:

  restore   ``ipvsadm-restore`` of the whole table into a new namespace
  converge  the library into another new namespace
  noop      the library again on that converged table     | taking turns with
  save      ``ipvsadm -Sn`` of the same table             | each other
  churn     1% of the services swap a real server (every 100th service: one out, one in)
  noop_churned  the library on the churned table

Ratios are of the medians over the rounds: converge/restore <= 1, noop/save <= 1,
churn/noop <= 1.2 are the targets; the exit status says whether they hold. Then, once: a
per-service pyroute2 loop at --naive-services (the naive reference, extrapolated linearly;
needs pyroute2 on the node) and the peak memory of a no-op run at --big services.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

from _harness import module_in_process

SCOPE_CIDRS = ["10.96.0.0/12"]
NAMESPACE_PREFIX = "kubeipvs-bench-"
# At most this long to let the kernel free a deleted namespace's table before the next step.
SETTLE_SECONDS = 180


def vip(index):
    return f"10.{96 + index // 65536}.{index // 256 % 256}.{index % 256}"


def backend(index, slot):
    number = index * 7 + slot
    return f"10.{200 + number // 65536 % 50}.{number // 256 % 256}.{number % 256}"


def make_table(services, dests, churn_every=0, churn_round=0):
    """services x dests as ipvs_sync entries; with churn_every, every n-th service swaps one endpoint."""
    table = []
    for index in range(services):
        servers = [{"address": backend(index, slot), "port": 8080} for slot in range(dests)]
        if churn_every and index % churn_every == 0:
            servers[0] = {"address": backend(index + 1000003 + churn_round, 0), "port": 8081}
        table.append({"protocol": "tcp", "address": vip(index), "port": 80, "scheduler": "rr",
                      "real_servers": servers})
    return table


def restore_text(table):
    lines = []
    for entry in table:
        lines.append(f"-A -t {entry['address']}:80 -s rr")
        lines.extend(f"-a -t {entry['address']}:80 -r {server['address']}:{server['port']} -m -w 1"
                     for server in entry["real_servers"])
    return "\n".join(lines) + "\n"


def cpu_seconds():
    """User + system CPU of this process and its finished children: the kernel's netlink work
    runs in the sending process, so this counts ipvsadm's and the library's kernel time alike."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args):
    """([wall seconds, CPU seconds], result)."""
    gc.collect()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = function(*args)
    return [time.perf_counter() - start, cpu_seconds() - cpu_start], result


def ipvs_sync(path):
    """The ipvs_sync module's main() with a real AnsibleModule in this process: services_file
    loaded, validated, the kernel read once, planned, applied in batches - all but the
    interpreter start-up and the controller's cost of a task. Returns the module's counts."""
    result = module_in_process("ipvs_sync", {"services_file": path, "scope": {"cidrs": SCOPE_CIDRS}})
    if result.get("failed"):
        raise SystemExit(f"ipvs_sync failed: {result.get('msg')}")
    return result["counts"]


def pyroute2_loop(path):
    """The naive reference: one pyroute2 request per service and per real server."""
    from pyroute2 import IPVS, IPVSDest, IPVSService

    with open(path) as handle:
        table = json.load(handle)
    ipvs = IPVS()
    try:
        for entry in table:
            service = IPVSService(addr=entry["address"], port=80, protocol=6, sched_name="rr")
            ipvs.service("add", service=service)
            for server in entry["real_servers"]:
                ipvs.dest("add", service=service,
                          dest=IPVSDest(addr=server["address"], port=server["port"], fwd_method=0, weight=1))
    finally:
        ipvs.close()


def run_tool(argv, stdin_path=None):
    with open(stdin_path or os.devnull, "rb") as stdin:
        subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, check=True)


# --- one step, run inside its namespace by the driver below --------------------------------------

def run_step(step, path):
    """Run one step in the current network namespace and print its figures as JSON."""
    if step.startswith("sync"):
        # Imported before the clock starts: the body is measured, not the interpreter's start-up
        # and imports (a fixed ~1 s under TCG that ipvsadm, a C program, does not pay either).
        import ansible.module_utils.testing  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
        import ansible_collections.kubeipvs.node.plugins.modules.ipvs_sync  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    elif step == "pyroute2":
        import pyroute2  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    if step == "restore":
        seconds, result = timed(run_tool, ["ipvsadm-restore"], path)
    elif step == "save":
        seconds, result = timed(run_tool, ["ipvsadm", "-Sn"])
    elif step == "sync":
        seconds, result = timed(ipvs_sync, path)
    elif step == "pyroute2":
        seconds, result = timed(pyroute2_loop, path)
    elif step == "sync_memory":
        gc.collect()
        tracemalloc.start()
        seconds, result = timed(ipvs_sync, path)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result = {"counts": result, "tracemalloc_peak_mib": round(peak / 2**20, 1)}
    else:
        raise SystemExit(f"unknown step {step}")
    print(json.dumps({"seconds": seconds, "result": result,
                      "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


# --- the driver -----------------------------------------------------------------------------------

class Namespaces:
    """Network namespaces made for the benchmark, each with what IPVS needs to accept real servers
    (a unicast route to them), all deleted at the end."""

    def __init__(self):
        self.names = []

    def new(self):
        name = NAMESPACE_PREFIX + secrets.token_hex(3)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        for argv in (["link", "add", "bench0", "type", "dummy"], ["link", "set", "bench0", "up"],
                     ["addr", "add", "10.255.255.1/32", "dev", "bench0"], ["route", "add", "default", "dev", "bench0"]):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        return name

    def step(self, name, step, path=""):
        completed = subprocess.run(["ip", "netns", "exec", name, sys.executable, os.path.abspath(__file__),
                                    "--step", step, "--file", path], capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"step {step} failed: {completed.stderr.strip()}")
        return json.loads(completed.stdout)

    def delete_all(self, settle=0):
        """Delete them; the kernel frees their IPVS tables in the background (a kworker), which
        up to ``settle`` seconds let it finish before anything else is measured."""
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], check=False)
        if self.names and settle:
            wait_idle(settle)
        self.names = []


def busy_fraction(seconds):
    """Share of all CPUs' time not idle over the next ``seconds`` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # idle + iowait
    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    return 1 - (idle_after - idle_before) / max(total_after - total_before, 1)


def wait_idle(limit, threshold=0.1):
    """Return once the machine was idle for 3 s in a row (or after ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if busy_fraction(3) < threshold:
            return
    print(f"the machine did not become idle in {limit} s; measuring anyway", file=sys.stderr, flush=True)


def write_json(directory, name, table):
    path = os.path.join(directory, name)
    with open(path, "w") as stream:
        json.dump(table, stream)
    return path


def expect_counts(step, figures, changed):
    counts = figures["result"]
    if bool(any(counts.values())) != changed:
        raise SystemExit(f"{step}: expected {'changes' if changed else 'no change'}, got {counts}")


def bench_rounds(args, namespaces, directory, report):
    table = make_table(args.services, args.dests)
    table_path = write_json(directory, "table.json", table)
    restore_path = os.path.join(directory, "table.ipvsadm")
    with open(restore_path, "w") as stream:
        stream.write(restore_text(table))
    del table
    samples = {name: [] for name in ("restore", "converge", "noop", "save", "churn", "noop_churned")}
    for round_number in range(args.rounds):
        churn_path = write_json(directory, f"churn-{round_number}.json",
                                make_table(args.services, args.dests, churn_every=100, churn_round=round_number))
        samples["restore"].append(namespaces.step(namespaces.new(), "restore", restore_path)["seconds"])
        namespaces.delete_all(settle=SETTLE_SECONDS)
        library = namespaces.new()
        figures = namespaces.step(library, "sync", table_path)
        expect_counts("converge", figures, changed=True)
        samples["converge"].append(figures["seconds"])
        for _turn in range(args.repeat):
            figures = namespaces.step(library, "sync", table_path)
            expect_counts("noop", figures, changed=False)
            samples["noop"].append(figures["seconds"])
            samples["save"].append(namespaces.step(library, "save")["seconds"])
        figures = namespaces.step(library, "sync", churn_path)
        expect_counts("churn", figures, changed=True)
        report["churn_counts"] = figures["result"]
        samples["churn"].append(figures["seconds"])
        figures = namespaces.step(library, "sync", churn_path)
        expect_counts("noop_churned", figures, changed=False)
        samples["noop_churned"].append(figures["seconds"])
        report["noop_ru_maxrss_mib"] = figures["ru_maxrss_mib"]
        namespaces.delete_all(settle=SETTLE_SECONDS)
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{name} {values[-1][1]:.1f}" for name, values in samples.items()), file=sys.stderr, flush=True)
    report["samples"] = samples
    report["median_s"] = {name: [round(statistics.median(sample[column] for sample in values), 3)
                                 for column in (0, 1)] for name, values in samples.items()}


def bench_naive(args, namespaces, directory, report):
    try:
        import pyroute2  # noqa: F401 - only checks that the reference can run
    except ImportError:
        report["pyroute2_loop"] = "skipped: pyroute2 not installed"
        return
    path = write_json(directory, "naive.json", make_table(args.naive_services, args.dests))
    seconds = namespaces.step(namespaces.new(), "pyroute2", path)["seconds"]
    namespaces.delete_all(settle=SETTLE_SECONDS)
    report["pyroute2_loop_services"] = args.naive_services
    report["pyroute2_loop_s"] = seconds
    report["pyroute2_loop_extrapolated_s"] = [value * args.services / args.naive_services for value in seconds]


def bench_memory(args, namespaces, directory, report):
    """Peak memory of a no-op ipvs_sync at ``--big`` services: fill with the library, then measure."""
    path = write_json(directory, "big.json", make_table(args.big, args.big_dests))
    name = namespaces.new()
    report["big_converge_s"] = namespaces.step(name, "sync", path)["seconds"]
    figures = namespaces.step(name, "sync_memory", path)
    expect_counts("big no-op", {"result": figures["result"]["counts"]}, changed=False)
    report["big_noop_tracemalloc_peak_mib"] = figures["result"]["tracemalloc_peak_mib"]
    report["big_noop_ru_maxrss_mib"] = figures["ru_maxrss_mib"]
    report["big_ipvsadm_save_s"] = namespaces.step(name, "save")["seconds"]
    namespaces.delete_all()


def ratios_of(report):
    median = report["median_s"]
    ratios = {}
    for suffix, column in (("", 1), ("_wall", 0)):  # CPU time decides, wall time is shown beside it
        ratios["converge_vs_ipvsadm_restore" + suffix] = median["converge"][column] / median["restore"][column]
        ratios["noop_vs_ipvsadm_save" + suffix] = median["noop"][column] / median["save"][column]
        ratios["churn_vs_noop" + suffix] = median["churn"][column] / median["noop"][column]
        if "pyroute2_loop_extrapolated_s" in report:
            ratios["pyroute2_loop_vs_converge" + suffix] = (
                report["pyroute2_loop_extrapolated_s"][column] / median["converge"][column])
    return {name: round(value, 3) for name, value in ratios.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--dests", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the main measurements (medians are kept)")
    parser.add_argument("--repeat", type=int, default=2, help="no-op / ipvsadm -Sn turns per round")
    parser.add_argument("--naive-services", type=int, default=100, help="services for the pyroute2 loop (0: skip)")
    parser.add_argument("--big", type=int, default=50000, help="services for the memory run (0: skip)")
    parser.add_argument("--big-dests", type=int, default=2)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, args.file)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root on a lab node: the benchmark makes network namespaces")
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_rr", "dummy"], check=True)
    report = {"columns": "each *_s figure is [wall seconds, CPU seconds]",
              "services": args.services, "dests": args.dests, "rounds": args.rounds,
              "python": sys.version.split()[0], "kernel": os.uname().release}
    namespaces = Namespaces()
    try:
        with tempfile.TemporaryDirectory(prefix="ipvs-bench-") as directory:
            bench_rounds(args, namespaces, directory, report)
            if args.naive_services:
                bench_naive(args, namespaces, directory, report)
            if args.big:
                bench_memory(args, namespaces, directory, report)
    finally:
        namespaces.delete_all()
    report["ratios"] = ratios_of(report)
    targets = {"converge_vs_ipvsadm_restore": 1.0, "noop_vs_ipvsadm_save": 1.0, "churn_vs_noop": 1.2}
    report["targets_met"] = {name: report["ratios"][name] <= limit for name, limit in targets.items()}
    print(json.dumps(report, indent=2))
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
