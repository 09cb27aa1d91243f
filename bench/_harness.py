# Copyright (c) kubeipvs.node contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the host benchmarks share: timing, running a module in-process or as Ansible runs it,
a private network namespace, and the ratio report against the standard tool."""

from __future__ import annotations

import contextlib
import importlib
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
NAMESPACE_ENV = "KUBEIPVS_BENCH_NETNS"


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


def timed(argv, env=None):
    """Run ``argv`` under GNU time: (seconds, peak RSS of its largest process in MiB, stdout)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        started = time.monotonic()
        completed = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", report.name, *argv],
                                   capture_output=True, text=True, env=env, check=False)
        seconds = time.monotonic() - started
        rss_kib, user, system = report.read().split()[-3:]
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-6000:] + completed.stderr[-3000:])
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({completed.returncode})")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(float(user) + float(system), 1),
            "peak_rss_mib": round(int(rss_kib) / 1024)}, completed.stdout


def sh(argv, stdin_text=None):
    completed = subprocess.run(argv, input=stdin_text, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{argv} failed: {completed.stderr}")
    return completed.stdout


def module_in_process(name, args):
    """kubeipvs.node.<name>'s main() with a real AnsibleModule; returns its JSON result."""
    from ansible.module_utils.testing import patch_module_args

    module = importlib.import_module(f"ansible_collections.kubeipvs.node.plugins.modules.{name}")
    output = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        module.main()
    return json.loads(output.getvalue())


def module_process(name, args, workdir):
    """The module file run the way Ansible runs it on a node: a new Python, its imports, its args file."""
    path = workdir / f"args-{secrets.token_hex(3)}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    output = subprocess.run(
        [sys.executable, str(COLLECTION / "plugins" / "modules" / f"{name}.py"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), LC_ALL="C"),
    ).stdout
    return json.loads(output)


def in_private_namespace(run_inside, options):
    """Run ``run_inside(options)`` in a network namespace of its own, deleted afterwards."""
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


def report(title, samples, comparisons, width):
    """Print medians and the ratios ``(name, ours, reference, target)`` for the body and process runs.

    Returns 1 when a body CPU ratio is above its target, else 0.
    """
    wall = {key: statistics.median(sample[0] for sample in values) for key, values in samples.items()}
    cpu = {key: statistics.median(sample[1] for sample in values) for key, values in samples.items()}
    print(f"{title} (seconds: wall, CPU)")
    for key in samples:
        print(f"  {key:18s} {wall[key]:8.3f} {cpu[key]:8.3f}")
    print(f"  {'ratio':{width}s} {'CPU':>7s} {'wall':>7s}")
    failed = False
    for mode in ("body", "process"):
        for name, ours, reference, target in comparisons:
            cpu_ratio = cpu[f"{mode}_{ours}"] / cpu[reference]
            wall_ratio = wall[f"{mode}_{ours}"] / wall[reference]
            verdict = ""
            if target is not None and mode == "body":
                verdict = "  ok" if cpu_ratio <= target else f"  ABOVE TARGET {target}"
                failed |= cpu_ratio > target
            print(f"  {mode + ' ' + name:{width}s} {cpu_ratio:6.2f}x {wall_ratio:6.2f}x{verdict}")
    return 1 if failed else 0
