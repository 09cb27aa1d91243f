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
import sys
import tempfile
from pathlib import Path

from _harness import (
    in_private_namespace,
    measured,
    module_in_process,
    module_process,
    report,
    sh,
)


def addresses(count, first_octet):
    return [f"{first_octet}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(1, count + 1)]


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
            for mode, runner in (
                ("body", lambda args: module_in_process("ipset", args)),
                ("process", lambda args: module_process("ipset", args, workdir)),
            ):
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

    comparisons = (
        ("converge / ipset restore", "converge", "restore", 1.5),
        ("swap (replace all) / ipset save + restore", "swap", "swap_restore", 1.5),
        ("no-op / ipset list", "noop", "list", None),
    )
    title = f"ipset benchmark, {count} members, median of {options.repeat} runs"
    return report(title, samples, comparisons, 48)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=5)
    return in_private_namespace(run_inside, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
