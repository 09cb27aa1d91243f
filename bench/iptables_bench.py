# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables benchmark: kubeipvs.node.iptables_chain beside a large unrelated ruleset, as ratios.

Run as root on a Linux host with iptables (no IPVS needed), from the checkout; the benchmark
creates a network namespace, re-runs itself inside it and deletes it afterwards:

    python3 bench/iptables_bench.py --foreign-rules 20000 --repeat 5

The namespace's nat table carries --foreign-rules rules in a chain the module does not own (the
worst case: the module reads the table it manages). The module owns KUBE-POSTROUTING (kube-proxy's
masquerade rules and the jump from POSTROUTING). Measured, as in bench/ipset_bench.py, both the
module's main() in this process ("body") and the module file run as Ansible runs it ("process"):
  no-op (converged chain)                vs  ``iptables-save`` (all tables) and ``iptables-save -t nat``
  change one rule (round trip + apply)   vs  ``iptables-save -t nat`` + ``iptables-restore --noflush`` of the
                                             same transaction (what any tool that checks before it writes does)
Medians of --repeat runs in CPU time (this process and its children) and wall time. Target: the
body's no-op CPU ratio against ``iptables-save`` <= 1.5; the exit status says whether it holds.
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

RULES = [
    "-m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-j MARK --xor-mark 0x4000",
    '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
]
CHANGED_RULES = [*RULES[:2], '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE']


def expect(result, changed):
    if result.get("failed") or result["changed"] != changed:
        raise SystemExit(f"expected changed={changed}, got {result}")


def foreign_ruleset(count):
    lines = ["*nat", ":FOREIGN-BULK - [0:0]", "-A POSTROUTING -j FOREIGN-BULK"]
    lines += [
        f"-A FOREIGN-BULK -s 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32 -p tcp -m tcp --dport "
        f"{1024 + n % 60000} -j RETURN"
        for n in range(count)
    ]
    return "\n".join([*lines, "COMMIT", ""])


def run_inside(options):
    samples = {
        key: []
        for key in (
            "save_all",
            "save_nat",
            "restore_change",
            "body_noop",
            "body_change",
            "process_noop",
            "process_change",
        )
    }
    sh(["iptables-restore", "--noflush", "-w"], foreign_ruleset(options.foreign_rules))
    base = {
        "table": "nat",
        "chain": "KUBE-POSTROUTING",
        "jumps": [{"chain": "POSTROUTING", "comment": "kubernetes postrouting rules"}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base["_ansible_tmpdir"] = str(workdir)
        expect(module_in_process("iptables_chain", dict(base, rules=RULES)), True)
        change = None
        for _round in range(options.repeat):
            with measured(samples["save_all"]):
                sh(["iptables-save"])
            with measured(samples["save_nat"]):
                sh(["iptables-save", "-t", "nat"])
            for mode, runner in (
                ("body", lambda args: module_in_process("iptables_chain", args)),
                ("process", lambda args: module_process("iptables_chain", args, workdir)),
            ):
                with measured(samples[f"{mode}_noop"]):
                    expect(runner(dict(base, rules=RULES)), False)
                with measured(samples[f"{mode}_change"]):
                    result = runner(dict(base, rules=CHANGED_RULES))
                expect(result, True)
                change = "\n".join(result["commands"]) + "\n"
                expect(runner(dict(base, rules=RULES)), True)
            # The reference reads the table and applies the same transaction the module applied.
            with measured(samples["restore_change"]):
                sh(["iptables-save", "-t", "nat"])
                sh(["iptables-restore", "--noflush", "-w"], change)
            expect(module_in_process("iptables_chain", dict(base, rules=RULES)), True)

    comparisons = (
        ("no-op / iptables-save", "noop", "save_all", 1.5),
        ("no-op / iptables-save -t nat", "noop", "save_nat", None),
        ("change one rule / iptables-save -t nat + restore", "change", "restore_change", None),
    )
    title = f"iptables benchmark, {options.foreign_rules} foreign nat rules, median of {options.repeat} runs"
    return report(title, samples, comparisons, 52)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foreign-rules", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    return in_private_namespace(run_inside, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
