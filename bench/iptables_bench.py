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
MODULE = COLLECTION / "plugins" / "modules" / "iptables_chain.py"
NAMESPACE_ENV = "KUBEIPVS_BENCH_NETNS"

RULES = [
    "-m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-j MARK --xor-mark 0x4000",
    '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
]
CHANGED_RULES = [*RULES[:2], '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE']


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def measured(samples):
    wall, cpu = time.perf_counter(), cpu_seconds()
    yield
    samples.append((time.perf_counter() - wall, cpu_seconds() - cpu))


def sh(argv, stdin_text=None):
    completed = subprocess.run(argv, input=stdin_text, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{argv} failed: {completed.stderr}")
    return completed.stdout


def module_in_process(args):
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.kubeipvs.node.plugins.modules import iptables_chain

    output = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        iptables_chain.main()
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
        expect(module_in_process(dict(base, rules=RULES)), True)
        change = None
        for _round in range(options.repeat):
            with measured(samples["save_all"]):
                sh(["iptables-save"])
            with measured(samples["save_nat"]):
                sh(["iptables-save", "-t", "nat"])
            for mode, runner in (("body", module_in_process), ("process", lambda args: module_process(args, workdir))):
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
            expect(module_in_process(dict(base, rules=RULES)), True)

    wall = {key: statistics.median(sample[0] for sample in values) for key, values in samples.items()}
    cpu = {key: statistics.median(sample[1] for sample in values) for key, values in samples.items()}
    print(
        f"iptables benchmark, {options.foreign_rules} foreign nat rules, median of {options.repeat} runs "
        "(seconds: wall, CPU)"
    )
    for key in samples:
        print(f"  {key:16s} {wall[key]:8.3f} {cpu[key]:8.3f}")
    print(f"  {'ratio':52s} {'CPU':>7s} {'wall':>7s}")
    failed = False
    for mode in ("body", "process"):
        for name, ours, reference, target in (
            ("no-op / iptables-save", "noop", "save_all", 1.5),
            ("no-op / iptables-save -t nat", "noop", "save_nat", None),
            ("change one rule / iptables-save -t nat + restore", "change", "restore_change", None),
        ):
            cpu_ratio = cpu[f"{mode}_{ours}"] / cpu[reference]
            wall_ratio = wall[f"{mode}_{ours}"] / wall[reference]
            verdict = ""
            if target is not None and mode == "body":
                verdict = "  ok" if cpu_ratio <= target else f"  ABOVE TARGET {target}"
                failed |= cpu_ratio > target
            print(f"  {mode + ' ' + name:52s} {cpu_ratio:6.2f}x {wall_ratio:6.2f}x{verdict}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foreign-rules", type=int, default=20000)
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
