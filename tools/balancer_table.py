"""Experiment: Δm and per-task metrics of several balancers against single-task baselines, over seeds.

Usage: python tools/balancer_table.py --balancers equal,uncertainty,pcgrad@representation --seeds 0,1,2
           [--config FILE] [--out DIR] [--jobs N] [--device auto|cpu|cuda] [--tolerance 0.02] [KEY=VALUE ...]

For every seed S it runs `mmtl baselines` (one single-task model per task, seed=S) once, and for
every balancer B it runs `mmtl train` (balancer.name=B, seed=S) and then `mmtl eval --baselines`
on the split and sample count the baselines were evaluated on. A balancer written NAME@ON also
sets balancer.on=ON (params or representation). KEY=VALUE overrides go to every run.
With --jobs N > 1 the runs are separate processes, N at a time (each with --threads torch threads,
default cores // N); with --jobs 1 they run in this process, one after another. A step whose
output already exists (OUT/seed-S/baselines/baselines.json, OUT/seed-S/B/eval.json) is skipped, so
an interrupted experiment continues where it stopped.

Writes OUT/table.md (a markdown table: Δm and each task's primary metric, mean ± sample std over
seeds, and how many seeds regressed a task; then the single-task baselines and the commands) and
OUT/table.json (every value per seed), and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def parse_balancer(spec: str) -> tuple[str, list[str]]:
    """``name`` or ``name@on`` -> (label, config overrides)."""
    name, _, on = spec.partition("@")
    return spec, [f"balancer.name={name}"] + ([f"balancer.on={on}"] if on else [])


class Runner:
    """Runs `mmtl` commands in this process (jobs=1) or as subprocesses; records every command."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads
        self.commands: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, argv: list[str], log: Path) -> None:
        with self._lock:
            self.commands.append("mmtl " + " ".join(argv))
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.jobs == 1:
            from contextlib import redirect_stdout

            from mmtl.cli import main

            with log.open("w") as out, redirect_stdout(out):
                code = main(argv)
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            with log.open("w") as out:
                code = subprocess.run([sys.executable, "-m", "mmtl", *argv], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"`mmtl {' '.join(argv)}` failed with exit code {code}; see {log}")


def run_experiment(balancers: list[str], seeds: list[int], out: Path, config: str | None, overrides: list[str],
                   jobs: int = 1, device: str = "auto", tolerance: float = 0.02, threads: int | None = None) -> dict[str, Any]:
    """Run every baseline, training and evaluation (skipping finished ones) and return the collected results."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    runner = Runner(jobs, threads)
    common = (["--config", config] if config else []) + [*overrides, f"train.device={device}", "train.progress=false"]
    eval_device = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)

    def baselines(seed: int) -> Path:
        target = out / f"seed-{seed}" / "baselines"
        if not (target / "baselines.json").is_file():
            runner(["baselines", *common, f"seed={seed}", f"output_dir={out}/seed-{seed}/mt",
                    "train.overwrite=true", "--out", str(target)], target / "run.log")
        return target / "baselines.json"

    def balancer_run(spec: str, seed: int, base: Future) -> Path:
        label, extra = parse_balancer(spec)
        run = out / f"seed-{seed}" / label
        result = run / "eval.json"
        if result.is_file():
            return result
        runner(["train", *common, *extra, f"seed={seed}", f"output_dir={run}", "train.overwrite=true"], run / "train.log")
        baselines_path = base.result()
        record = json.loads(baselines_path.read_text())
        runner(["eval", "--checkpoint", str(run), "--baselines", str(baselines_path), "--split", record["split"],
                "--max-samples", str(record.get("max_samples") or 0), "--device", eval_device,
                "--tolerance", str(tolerance), "--output", str(result)], run / "eval.log")
        return result

    # baselines are queued first, so a run waiting on its seed's baselines never blocks them;
    # with one job everything runs inline in the main thread (Ctrl-C then stops a run cleanly)
    with (ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else InlinePool()) as pool:
        base_futures = {seed: pool.submit(baselines, seed) for seed in seeds}
        run_futures = {(spec, seed): pool.submit(balancer_run, spec, seed, base_futures[seed])
                       for spec in balancers for seed in seeds}
        base_paths = {seed: f.result() for seed, f in base_futures.items()}
        results = {key: json.loads(f.result().read_text()) for key, f in run_futures.items()}
    return collect(balancers, seeds, base_paths, results, runner.commands)


class InlinePool:
    """The part of an executor's interface used here, running each call at once in this thread."""

    def __enter__(self) -> "InlinePool":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # re-raised by result(), as an executor would
            future.set_exception(exc)
        return future


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def summary(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def collect(balancers: list[str], seeds: list[int], base_paths: dict[int, Path],
            results: dict[tuple[str, int], dict[str, Any]], commands: list[str]) -> dict[str, Any]:
    """Per balancer: Δm and every task metric summarised over seeds, regressions per task; and the baselines."""
    base_records = {seed: json.loads(path.read_text()) for seed, path in base_paths.items()}
    first = results[(balancers[0], seeds[0])]
    primary = first["primary_metric"]
    table: dict[str, Any] = {}
    for spec in balancers:
        runs = [results[(spec, seed)] for seed in seeds]
        metrics = {task: {metric: summary([r["model"][task][metric] for r in runs]) for metric in first["model"][task]}
                   for task in first["model"]}
        regressed = {task: sum(not r["delta"]["verdicts"].get(task, {"ok": True})["ok"] for r in runs) for task in primary}
        table[spec] = {"delta_m": summary([r["delta"]["delta_m"] for r in runs]), "metrics": metrics,
                       "regressed": regressed,
                       "flops_ratio": runs[0]["delta"].get("flops", {}).get("ratio"),
                       "parameter_ratio": runs[0]["delta"].get("parameters", {}).get("ratio")}
    base_tasks = base_records[seeds[0]]["tasks"]
    baselines = {task: {metric: summary([base_records[s]["tasks"][task]["metrics"][metric] for s in seeds])
                        for metric in base_tasks[task]["metrics"]} for task in base_tasks}
    return {"seeds": seeds, "split": base_records[seeds[0]]["split"], "primary_metric": primary,
            "balancers": table, "baselines": baselines, "commands": commands}


def _cell(s: dict[str, Any], scale: float = 1.0, signed: bool = False) -> str:
    mean, std = scale * s["mean"], scale * s["std"]
    digits = 2 if signed else 3
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if len(s["values"]) > 1 else text


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table, the baselines row and the commands."""
    primary = report["primary_metric"]
    n = len(report["seeds"])
    header = ["balancer", "Δm (%)"] + [f"{t} {m}" for t, m in primary.items()] + ["seeds with a task regressed"]
    lines = [f"Split {report['split']!r}, {n} seed(s) {report['seeds']}: mean ± sample std over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec, row in report["balancers"].items():
        regressed = ", ".join(f"{t} {k}/{n}" for t, k in row["regressed"].items() if k) or "none"
        cells = [spec, _cell(row["delta_m"], 100, signed=True)]
        cells += [_cell(row["metrics"][t][m]) for t, m in primary.items()] + [regressed]
        lines.append("| " + " | ".join(cells) + " |")
    base = report["baselines"]
    lines.append("| single-task models | 0 (reference) | " + " | ".join(_cell(base[t][m]) for t, m in primary.items()) + " | |")
    lines += ["", "Commands:", "", "```"] + report["commands"] + ["```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--balancers", required=True, help="comma-separated balancer names (NAME or NAME@params|representation)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--config", help="experiment YAML (default: the built-in quickstart experiment)")
    parser.add_argument("--out", default="runs/balancer-table", help="output directory (default runs/balancer-table)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes when > 1)")
    parser.add_argument("--threads", type=int, help="torch threads per process with --jobs > 1 (default cores // jobs)")
    parser.add_argument("--device", default="auto", help="train.device of every run and eval device (auto, cpu, cuda)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="non-regression tolerance of mmtl eval")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    balancers = [b for b in args.balancers.split(",") if b]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not balancers or not seeds or args.jobs < 1:
        parser.error("need at least one balancer, one seed and --jobs >= 1")
    out = Path(args.out)
    try:
        report = run_experiment(balancers, seeds, out, args.config, args.overrides, args.jobs, args.device,
                                args.tolerance, args.threads)
    except RuntimeError as exc:
        print(f"balancer_table: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
