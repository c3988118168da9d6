"""Benchmark: `mmtl quickstart` from an empty directory, wall-clock and quality against the baselines.

Usage: python tools/bench_quickstart.py [--workdir DIR] [KEY=VALUE ...]

Runs the real command in a fresh directory (no data, no run), then reads its metrics.json.
Prints a table and a final JSON line with total seconds, the share of the 300 s budget, and each
task's primary metric next to its trivial baseline (ratio model / baseline, measured in the same run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="run here instead of a temporary directory (must be empty)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmtl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmtl", "quickstart", "train.progress=false", *args.overrides],
                          cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    if done.returncode:
        return done.returncode
    metrics = json.loads((workdir / "runs" / "quickstart" / "metrics.json").read_text())
    tasks = {}
    for task, metric in metrics["primary_metric"].items():
        model, base = metrics["model"][task][metric], metrics["baseline"][task][metric]
        tasks[task] = {"metric": metric, "model": round(model, 4), "baseline": round(base, 4),
                       "ratio": round(model / base, 2) if base else None}
    result = {
        "bench": "quickstart", "total_seconds": round(seconds, 1), "train_seconds": metrics["train_seconds"],
        "budget_share": round(seconds / BUDGET_SECONDS, 3), "tasks": tasks,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), python {platform.python_version()}",
    }
    print(f"\nquickstart: {seconds:.0f}s wall-clock ({100 * seconds / BUDGET_SECONDS:.0f}% of the {BUDGET_SECONDS}s budget)")
    for task, row in tasks.items():
        print(f"  {task:<14} {row['metric']:<9} model {row['model']:>8}  baseline {row['baseline']:>8}  ratio {row['ratio']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
