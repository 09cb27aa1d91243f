# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPVS benchmark: kubeipvs.node's library against ipvsadm on the same kernel, as ratios.

Run as root on a lab node (it flushes the IPVS table!), with the collection on PYTHONPATH:

    PYTHONPATH=/root/c python3 bench/ipvs_bench.py --services 10000 --dests 10

Every library measurement runs the code path of the ipvs_sync module's body: load the JSON
services file, normalise and validate it, read the kernel once, plan, apply in batches. The
references run in the same process run: ``ipvsadm-restore`` for the converge from empty,
``ipvsadm -Sn`` for the no-op read, a pyroute2 per-service loop (at a smaller size,
extrapolated linearly) as the naive reference. Results are ratios; the exit status says
whether the targets hold:
  converge / ipvsadm-restore <= 1, no-op / ipvsadm -Sn <= 1, churn(1%) / no-op <= 1.2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

from ansible_collections.kubeipvs.node.plugins.module_utils._ipvs import (
    IpvsKernel,
    keys_with_thresholds,
    normalize_services,
)
from ansible_collections.kubeipvs.node.plugins.module_utils._ipvs_plan import Scope, plan_changes, result_counts

SCOPE_CIDRS = ["10.96.0.0/12"]


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


# A deleted real server stays on the namespace's dest trash list for 2-3 minutes
# (IP_VS_DEST_TRASH_PERIOD, a 60 s timer), and every real server added meanwhile walks that
# list: right after flushing 100k real servers, adding 100k more costs O(n^2) in the kernel.
SETTLE_SECONDS = 190


def flush(settle=True):
    """Empty the table, then wait until the kernel's dest trash has been emptied (see above), so
    that a converge measured next does not pay for the previous table."""
    subprocess.run(["ipvsadm", "-C"], check=True)
    if settle:
        time.sleep(SETTLE_SECONDS)


def cpu_seconds():
    """User + system CPU of this process and its finished children: the kernel's netlink work
    runs in the sending process, so this counts ipvsadm's and the library's kernel time alike."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args):
    """(wall seconds, CPU seconds, result). On a shared 2-core host the CPU figure is the steadier."""
    gc.collect()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = function(*args)
    return (time.perf_counter() - start, cpu_seconds() - cpu_start), result


def sync_from_file(path):
    """What ipvs_sync's body does with services_file (minus Ansible's own start-up)."""
    with open(path, "rb") as handle:
        entries = json.loads(handle.read())
    desired, _absent = normalize_services(entries)
    del entries  # the module drops the raw list too once it is validated
    scope = Scope(cidrs=SCOPE_CIDRS)
    kernel = IpvsKernel()
    try:
        current = kernel.read(exact=keys_with_thresholds(desired))
        plan = plan_changes(desired, current, scope, exclusive=True, now=time.time())
        changes = plan.ordered()
        if changes:
            kernel.apply(changes)
    finally:
        kernel.close()
    return result_counts(plan)


def run_ipvsadm_restore(text):
    subprocess.run(["ipvsadm-restore"], input=text.encode(), check=True)


def run_ipvsadm_save():
    subprocess.run(["ipvsadm", "-Sn"], stdout=subprocess.DEVNULL, check=True)


def pyroute2_loop(table):
    """The naive reference: one pyroute2 request per service and per real server."""
    from pyroute2 import IPVS, IPVSDest, IPVSService

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


def write_json(table):
    handle, path = tempfile.mkstemp(prefix="ipvs-bench-", suffix=".json")
    with os.fdopen(handle, "w") as stream:
        json.dump(table, stream)
    return path


def best_of(runs, function, *args):
    """The run with the least CPU time: the guest's clock also charges it the host's contention."""
    best = None
    for _attempt in range(runs):
        seconds, result = timed(function, *args)
        if best is None or seconds[1] < best[0][1]:
            best = (seconds, result)
    return best


def bench_main_size(args, report):
    table = make_table(args.services, args.dests)
    path = write_json(table)
    churn_path = write_json(make_table(args.services, args.dests, churn_every=100))
    try:
        flush()
        report["ipvsadm_restore_s"], _result = timed(run_ipvsadm_restore, restore_text(table))
        flush()
        report["converge_s"], counts = timed(sync_from_file, path)
        report["converge_counts"] = counts
        # No-op run and ipvsadm -Sn take turns, best of --repeat each.
        report["noop_s"], counts = best_of(args.repeat, sync_from_file, path)
        if any(counts.values()):
            raise SystemExit(f"no-op run changed something: {counts}")
        report["ipvsadm_save_s"], _result = best_of(args.repeat, run_ipvsadm_save)
        report["churn_s"], counts = timed(sync_from_file, churn_path)
        report["churn_counts"] = counts
        report["noop_after_churn_s"], _result = best_of(args.repeat, sync_from_file, churn_path)
        report["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        os.unlink(path)
        os.unlink(churn_path)
        flush()


def bench_naive(args, report):
    try:
        import pyroute2  # noqa: F401 - only checks that the reference can run
    except ImportError:
        report["pyroute2_loop"] = "skipped: pyroute2 not installed"
        return
    table = make_table(args.naive_services, args.dests)
    flush(settle=False)
    seconds, _result = timed(pyroute2_loop, table)
    flush()
    report["pyroute2_loop_services"] = args.naive_services
    report["pyroute2_loop_s"] = seconds
    report["pyroute2_loop_extrapolated_s"] = tuple(value * args.services / args.naive_services for value in seconds)


def bench_memory(args, report):
    """Peak memory of a no-op ipvs_sync at ``--big`` services: fill with the library, then measure."""
    table = make_table(args.big, args.big_dests)
    path = write_json(table)
    del table
    try:
        flush()
        report["big_converge_s"], _result = timed(sync_from_file, path)
        gc.collect()
        tracemalloc.start()
        report["big_noop_s"], _result = timed(sync_from_file, path)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        report["big_noop_tracemalloc_peak_mib"] = round(peak / 2**20, 1)
        report["big_ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        report["big_ipvsadm_save_s"], _result = timed(run_ipvsadm_save)
    finally:
        os.unlink(path)
        flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--dests", type=int, default=10)
    parser.add_argument("--naive-services", type=int, default=200)
    parser.add_argument("--big", type=int, default=50000, help="services for the memory run (0: skip)")
    parser.add_argument("--big-dests", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2, help="runs of the no-op measurements (best is kept)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root on a lab node: the benchmark flushes the IPVS table")
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_rr"], check=True)
    report = {"columns": "each *_s figure is [wall seconds, CPU seconds]",
              "services": args.services, "dests": args.dests, "python": sys.version.split()[0],
              "kernel": os.uname().release}
    bench_main_size(args, report)
    bench_naive(args, report)
    if args.big:
        bench_memory(args, report)
    ratios = {}
    for suffix, column in (("", 1), ("_wall", 0)):  # CPU time decides, wall time is shown beside it
        def ratio(mine, theirs, column=column):
            return report[mine][column] / report[theirs][column]

        ratios["converge_vs_ipvsadm_restore" + suffix] = ratio("converge_s", "ipvsadm_restore_s")
        ratios["noop_vs_ipvsadm_save" + suffix] = ratio("noop_s", "ipvsadm_save_s")
        ratios["churn_vs_noop" + suffix] = ratio("churn_s", "noop_s")
        if "pyroute2_loop_extrapolated_s" in report:
            ratios["pyroute2_loop_vs_converge" + suffix] = (
                report["pyroute2_loop_extrapolated_s"][column] / report["converge_s"][column])
    report["ratios"] = {name: round(value, 3) for name, value in ratios.items()}
    targets = {"converge_vs_ipvsadm_restore": 1.0, "noop_vs_ipvsadm_save": 1.0, "churn_vs_noop": 1.2}
    report["targets_met"] = {name: ratios[name] <= limit for name, limit in targets.items()}
    print(json.dumps(report, indent=2, default=str))
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
