"""Benchmark: `mmtl quickstart` from an empty directory, over seeds: wall-clock, quality, spread.

Usage: python tools/bench_quickstart.py [--seeds 0,1,2] [--workdir DIR] [KEY=VALUE ...]

Runs the real command once per seed (``seed=S``) in a fresh directory (no data, no run), then reads
its metrics.json, and predicts the held-out split with the trained checkpoint to count the
summaries that name the right artist (shapes world's document-only fact). Prints a table per seed,
the mean and spread of every primary metric, the issue #13 targets, and a final JSON line with the
seconds, the share of the 300 s budget, and each task's primary metric next to its trivial
baseline (ratio model / baseline, measured in the same run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 300
# issue #13: minimum of the mean primary metric, and largest spread (max - min) over the seeds
TARGETS = {"recognition": (0.90, 0.03), "captioning": (60.0, 3.0), "summarization": (95.0, 3.0)}
ARTIST_TARGET = 0.95


def test_split(data: Path, split: str = "test") -> list[tuple[bytes | None, dict]]:
    """(image bytes, annotation) of every sample of ``split`` in the shard directory ``data``."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(data.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(parts.get("png"), json.loads(parts["json"])) for _, parts in sorted(samples.items())]


def artist_accuracy(run_dir: Path, data: Path) -> float:
    """Share of held-out summaries that name exactly the artist of the reference summary."""
    from data_pipelines.shapes_world import NAMES
    from mmtl import Predictor

    predictor = Predictor.from_pretrained(run_dir)
    samples = [(image, a) for image, a in test_split(data) if a.get("summaries")]
    right = 0
    for start in range(0, len(samples), 50):
        chunk = samples[start : start + 50]
        results = predictor.predict_batch([image for image, _ in chunk],
                                          [a["document"] for _, a in chunk], ["summarization"])
        for (_, annotation), result in zip(chunk, results):
            artist = {w for w in annotation["summaries"][0].split() if w in NAMES}
            right += {w for w in (result.summary or "").split() if w in NAMES} == artist
    return right / max(len(samples), 1)


def run_seed(seed: int, workdir: Path, overrides: list[str]) -> dict:
    """One quickstart in ``workdir``; its seconds, metrics and artist accuracy."""
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmtl", "quickstart", "train.progress=false", f"seed={seed}", *overrides],
                          cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"quickstart (seed {seed}) failed with exit code {done.returncode}")
    metrics = json.loads((workdir / "runs" / "quickstart" / "metrics.json").read_text())
    tasks = {}
    for task, metric in metrics["primary_metric"].items():
        model, base = metrics["model"][task][metric], metrics["baseline"][task][metric]
        tasks[task] = {"metric": metric, "model": round(model, 4), "baseline": round(base, 4),
                       "ratio": round(model / base, 2) if base else None}
    artist = artist_accuracy(workdir / "runs" / "quickstart", workdir / "data" / "quickstart")
    return {"seed": seed, "total_seconds": round(seconds, 1), "train_seconds": metrics["train_seconds"],
            "budget_share": round(seconds / BUDGET_SECONDS, 3), "tasks": tasks, "artist_accuracy": round(artist, 3)}


def summarize(runs: list[dict]) -> dict:
    """Mean and spread of each primary metric over the runs, and whether each target is met."""
    summary = {}
    for task in runs[0]["tasks"]:
        values = [run["tasks"][task]["model"] for run in runs]
        mean, spread = sum(values) / len(values), max(values) - min(values)
        minimum, max_spread = TARGETS.get(task, (None, None))
        summary[task] = {"mean": round(mean, 4), "spread": round(spread, 4), "target": minimum,
                         "met": minimum is None or (mean >= minimum and spread <= max_spread)}
    artist = [run["artist_accuracy"] for run in runs]
    summary["artist_accuracy"] = {"mean": round(sum(artist) / len(artist), 3), "target": ARTIST_TARGET,
                                  "met": min(artist) >= ARTIST_TARGET}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="run here instead of a temporary directory (must be empty)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, one quickstart each")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmtl-bench-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_seed(seed, workdir / f"seed{seed}", args.overrides) for seed in seeds]
    for run in runs:
        print(f"\nseed {run['seed']}: {run['total_seconds']:.0f}s wall-clock "
              f"({100 * run['budget_share']:.0f}% of the {BUDGET_SECONDS}s budget), artist right in "
              f"{100 * run['artist_accuracy']:.1f}% of summaries")
        for task, row in run["tasks"].items():
            print(f"  {task:<14} {row['metric']:<9} model {row['model']:>8}  baseline {row['baseline']:>8}  ratio {row['ratio']}")
    summary = summarize(runs)
    print("\nover seeds " + ", ".join(map(str, seeds)) + ":")
    for name, row in summary.items():
        print(f"  {name:<16} mean {row['mean']:>8}  spread {row.get('spread', '-')!s:>7}  "
              f"target {row['target']}  {'met' if row['met'] else 'NOT met'}")
    machine = f"{platform.machine()} {os.cpu_count()} cpu(s), python {platform.python_version()}"
    print(json.dumps({"bench": "quickstart", "seeds": seeds, "runs": runs, "summary": summary, "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
