# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ipset benchmark: the kubeipvs.node.ipset module against the ipset tool on the same kernel, as ratios.

Run as root on a Linux host with ipset (no IPVS needed), from the checkout; the benchmark creates
a network namespace, re-runs itself inside it and deletes it afterwards:

    python3 bench/ipset_bench.py --members 100000 --repeat 5

Two ways of running the module are measured:
  body     the module's main() in this process, with a real AnsibleModule (argument validation,
           reading and normalising every member, one ``ipset save``, the diff, one
           ``ipset restore``) — what the module costs beyond the interpreter start, like
           bench/ipvs_bench.py measures ipvs_sync;
  process  the module file run as Ansible runs it on a node (a new Python, the imports, the same
           body), without the controller/SSH cost of a task.
References, on the same kernel in the same namespace:
  converge of N members from nothing  vs  ``ipset restore`` of the same create + add batch
  replace all N members (swap)        vs  ``ipset save NAME`` + ``ipset restore`` of create / add / swap /
                                          destroy (a replacement that checks before it writes must read)
  no-op on the converged set          vs  ``ipset list NAME``
Medians of --repeat runs, in CPU time (user + system of this process and its children, which
includes the kernel work the ipset tool's netlink calls cause: on a loaded machine wall time
swings with the neighbours, CPU time much less) and in wall time. Target: the body's converge and
swap CPU ratios <= 1.5; the exit status says whether they hold.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLLECTION = Path(__file__).resolve().parents[1]
COLLECTIONS_PATH = COLLECTION / ".build" / "collections"
MODULE = COLLECTION / "plugins" / "modules" / "ipset.py"
NAMESPACE_ENV = "KUBEIPVS_BENCH_NETNS"


def addresses(count, first_octet):
    return [f"{first_octet}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(1, count + 1)]


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def measured(samples):
    """Append (wall, CPU) seconds of the block to ``samples``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield
    samples.append((time.perf_counter() - wall, cpu_seconds() - cpu))


def sh(argv, stdin_text=None):
    completed = subprocess.run(argv, input=stdin_text, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{argv} failed: {completed.stderr}")
    return completed.stdout


def module_in_process(args):
    """The module's main() with a real AnsibleModule; returns its JSON result."""
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.kubeipvs.node.plugins.modules import ipset as ipset_module

    output = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        ipset_module.main()
    return json.loads(output.getvalue())


def module_process(args, workdir):
    path = workdir / f"args-{secrets.token_hex(3)}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    output = subprocess.run(
        [sys.executable, str(MODULE), str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), LC_ALL="C"),
    ).stdout
    return json.loads(output)


def expect(result, method):
    if result.get("failed") or result["method"] != method:
        raise SystemExit(f"expected {method}, got {result}")


def run_inside(options):
    count = options.members
    maxelem = max(65536, count * 2)
    header = f"hash:ip family inet hashsize 1024 maxelem {maxelem}"
    old, new = addresses(count, 10), addresses(count, 11)
    samples = {
        key: []
        for key in (
            "restore",
            "swap_restore",
            "list",
            "body_converge",
            "body_swap",
            "body_noop",
            "process_converge",
            "process_swap",
            "process_noop",
        )
    }
    converge_batch = f"create REF {header}\n" + "".join(f"add REF {entry}\n" for entry in old)
    swap_batch = (
        f"create REF-TMP {header}\n"
        + "".join(f"add REF-TMP {entry}\n" for entry in new)
        + "swap REF-TMP REF\ndestroy REF-TMP\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        old_file, new_file = workdir / "old.txt", workdir / "new.txt"
        old_file.write_text("\n".join(old) + "\n")
        new_file.write_text("\n".join(new) + "\n")
        for _round in range(options.repeat):
            with measured(samples["restore"]):
                sh(["ipset", "restore"], converge_batch)
            with measured(samples["swap_restore"]):
                sh(["ipset", "save", "REF"])
                sh(["ipset", "restore"], swap_batch)
            with measured(samples["list"]):
                sh(["ipset", "list", "REF"])
            sh(["ipset", "destroy", "REF"])
            for mode, runner in (("body", module_in_process), ("process", lambda args: module_process(args, workdir))):
                base = {
                    "name": "BENCH",
                    "type": "hash:ip",
                    "maxelem": maxelem,
                    "exclusive": True,
                    "_ansible_tmpdir": str(workdir),
                }
                with measured(samples[f"{mode}_converge"]):
                    expect(runner(dict(base, members_file=str(old_file))), "create")
                with measured(samples[f"{mode}_swap"]):
                    expect(runner(dict(base, members_file=str(new_file))), "swap")
                with measured(samples[f"{mode}_noop"]):
                    expect(runner(dict(base, members_file=str(new_file))), "none")
                sh(["ipset", "destroy", "BENCH"])

    wall = {key: statistics.median(sample[0] for sample in values) for key, values in samples.items()}
    cpu = {key: statistics.median(sample[1] for sample in values) for key, values in samples.items()}
    print(f"ipset benchmark, {count} members, median of {options.repeat} runs (seconds: wall, CPU)")
    for key in samples:
        print(f"  {key:18s} {wall[key]:8.3f} {cpu[key]:8.3f}")
    print(f"  {'ratio':48s} {'CPU':>7s} {'wall':>7s}")
    failed = False
    for mode in ("body", "process"):
        for name, ours, reference, target in (
            ("converge / ipset restore", "converge", "restore", 1.5),
            ("swap (replace all) / ipset save + restore", "swap", "swap_restore", 1.5),
            ("no-op / ipset list", "noop", "list", None),
        ):
            cpu_ratio = cpu[f"{mode}_{ours}"] / cpu[reference]
            wall_ratio = wall[f"{mode}_{ours}"] / wall[reference]
            verdict = ""
            if target is not None and mode == "body":
                verdict = "  ok" if cpu_ratio <= target else f"  ABOVE TARGET {target}"
                failed |= cpu_ratio > target
            print(f"  {mode + ' ' + name:48s} {cpu_ratio:6.2f}x {wall_ratio:6.2f}x{verdict}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    if os.environ.get(NAMESPACE_ENV):
        return run_inside(options)
    namespace = f"kubeipvs-t-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), **{NAMESPACE_ENV: namespace})
        return subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, *sys.argv], env=env, check=False
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    sys.exit(main())
