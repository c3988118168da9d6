"""Experiment: Δm and per-task metrics of several balancers against single-task baselines, over seeds.

Usage: python tools/balancer_table.py --balancers equal,uncertainty,pcgrad@representation --seeds 0,1,2
           [--config FILE] [--out DIR] [--jobs N] [--device auto|cpu|cuda] [--tolerance 0.02]
           [--tune-weights 1,3] [KEY=VALUE ...]

For every seed S it runs `mmtl baselines` (one single-task model per task, seed=S) once, and for
every balancer B it runs `mmtl train` (balancer.name=B, seed=S) and then `mmtl eval --baselines`
on the split and sample count the baselines were evaluated on. A balancer written NAME@ON also
sets balancer.on=ON (params or representation). KEY=VALUE overrides go to every run.
With --jobs N > 1 the runs are separate processes, N at a time (each with --threads torch threads,
default cores // N); with --jobs 1 they run in this process, one after another. A step whose
output already exists (OUT/seed-S/baselines/baselines.json, OUT/seed-S/B/eval.json) is skipped, so
an interrupted experiment continues where it stopped.

Tuned scalarisation (the baseline Kurin et al. and Xin et al., NeurIPS 2022, recommend): per seed,
fixed task weights (balancer.name=fixed) are searched over every combination of the --tune-weights
values (scaled to mean 1, duplicates up to scale dropped), each trained and scored by Δm on the
validation split (data.val_split, against the baselines' metrics there); the best (no regression
first, then Δm) is then evaluated on the test split like every balancer. --tune-weights "" skips it.

Writes OUT/table.md (a markdown table: Δm (mmtl eval's: per task the mean relative change over its
metrics, then the mean over tasks) and each task's primary metric, mean ± sample std over seeds, the
number of seeds with a regression and which tasks regressed; then the single-task baselines and
the commands) and OUT/table.json (every value per seed), and prints the table.
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

from mmtl.tuning import best_on_validation, weight_grid


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

            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)  # in this process too: metrics depend on the thread count
            try:
                with log.open("w") as out, redirect_stdout(out):
                    code = main(argv)
            finally:
                torch.set_num_threads(threads)
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            with log.open("w") as out:
                code = subprocess.run([sys.executable, "-m", "mmtl", *argv], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"`mmtl {' '.join(argv)}` failed with exit code {code}; see {log}")


TUNED = "tuned scalarisation"


class Experiment:
    """The runs of one table: baselines per seed, each balancer per seed, the tuned-scalarisation search."""

    def __init__(self, out: Path, runner: Runner, common: list[str], eval_device: str, tolerance: float) -> None:
        self.out, self.runner, self.common = out, runner, common
        self.eval_device, self.tolerance = eval_device, tolerance

    def baselines(self, seed: int) -> Path:
        """OUT/seed-S/baselines/baselines.json, trained unless it exists."""
        target = self.out / f"seed-{seed}" / "baselines"
        if not (target / "baselines.json").is_file():
            self.runner(["baselines", *self.common, f"seed={seed}", f"output_dir={self.out}/seed-{seed}/mt",
                         "train.overwrite=true", "--out", str(target)], target / "run.log")
        return target / "baselines.json"

    def evaluate(self, run: Path, base: Future, result: Path, split: str | None = None) -> Path:
        """`mmtl eval --baselines` of ``run`` on ``split`` (default: the baselines' own) into ``result``."""
        baselines_path = base.result()
        record = json.loads(baselines_path.read_text())
        split = split or record["split"]
        samples = record.get("split_max_samples", {}).get(split, record.get("max_samples")) or 0
        # the data comes from the run's own config (a checkpoint's data settings are never read)
        self.runner(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"),
                     "--baselines", str(baselines_path), "--split", split,
                     "--max-samples", str(samples), "--device", self.eval_device, "--tolerance", str(self.tolerance),
                     "--output", str(result)], result.with_suffix(".log"))
        return result

    def balancer_run(self, spec: str, seed: int, base: Future, run: Path | None = None, split: str | None = None,
                     weights: dict[str, float] | None = None) -> Path:
        """Train ``spec`` with ``seed`` (unless trained) and evaluate it (unless evaluated); the eval JSON."""
        label, extra = parse_balancer(spec)
        extra += [f"balancer.weights.{task}={value}" for task, value in (weights or {}).items()]
        run = run or self.out / f"seed-{seed}" / label
        result = run / ("eval.json" if split is None else f"eval-{split}.json")
        if result.is_file():
            return result
        if not (run / "checkpoints" / "LATEST").is_file() or not (run / "train.done").is_file():
            self.runner(["train", *self.common, *extra, f"seed={seed}", f"output_dir={run}", "train.overwrite=true"],
                        run / "train.log")
            (run / "train.done").touch()
        return self.evaluate(run, base, result, split)

    def tuned(self, seed: int, base: Future, candidates: list[tuple[dict[str, float], Future]]) -> Path:
        """The candidate best on the validation split, evaluated on the test split (with its weights recorded)."""
        result = self.out / f"seed-{seed}" / "tuned" / "eval.json"
        if not result.is_file():
            scored = [(weights, json.loads(f.result().read_text())) for weights, f in candidates]
            weights, _ = best_on_validation([(w, r["delta"]) for w, r in scored])
            self.evaluate(self.out / f"seed-{seed}" / "tuned" / _weights_label(weights), base, result)
            record = json.loads(result.read_text())
            record["weights"] = weights
            record["validation"] = [{"weights": w, "delta_m": r["delta"]["delta_m"], "regressed": r["delta"]["regressed"]}
                                    for w, r in scored]
            result.write_text(json.dumps(record, indent=2))
        return result


def run_experiment(balancers: list[str], seeds: list[int], out: Path, config: str | None, overrides: list[str],
                   jobs: int = 1, device: str = "auto", tolerance: float = 0.02, threads: int | None = None,
                   tune_weights: list[float] | None = None) -> dict[str, Any]:
    """Run every baseline, training and evaluation (skipping finished ones) and return the collected results."""
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    runner = Runner(jobs, threads)
    common = (["--config", config] if config else []) + [*overrides, f"train.device={device}", "train.progress=false"]
    eval_device = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)
    experiment = Experiment(out, runner, common, eval_device, tolerance)
    # baselines are queued first, so a run waiting on its seed's baselines never blocks them (and each
    # tuned choice after its candidates); with one job everything runs inline in the main thread
    # (Ctrl-C then stops a run cleanly)
    with (ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else InlinePool()) as pool:
        base_futures = {seed: pool.submit(experiment.baselines, seed) for seed in seeds}
        run_futures = {(spec, seed): pool.submit(experiment.balancer_run, spec, seed, base_futures[seed])
                       for spec in balancers for seed in seeds}
        if tune_weights:
            import mmtl.components  # noqa: F401  (registers the components that configs name)
            from mmtl.config import load_config

            resolved = load_config(config, overrides)
            for seed in seeds:
                candidates = [(weights, pool.submit(
                    experiment.balancer_run, "fixed", seed, base_futures[seed],
                    out / f"seed-{seed}" / "tuned" / _weights_label(weights), resolved.data.val_split, weights,
                    )) for weights in weight_grid(list(resolved.tasks), tune_weights)]
                run_futures[(TUNED, seed)] = pool.submit(experiment.tuned, seed, base_futures[seed], candidates)
        base_paths = {seed: f.result() for seed, f in base_futures.items()}
        results = {key: json.loads(f.result().read_text()) for key, f in run_futures.items()}
    return collect(balancers + ([TUNED] if tune_weights else []), seeds, base_paths, results, runner.commands)


def _weights_label(weights: dict[str, float]) -> str:
    return "w-" + "-".join(f"{v:g}" for v in weights.values())


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


def summary(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values; None values (Δm undefined) are
    kept in ``values`` but not averaged (mean None when all are None)."""
    known = [v for v in values if v is not None]
    return {"mean": statistics.fmean(known) if known else None,
            "std": statistics.stdev(known) if len(known) > 1 else 0.0, "values": values}


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
        seeds_regressed = sum(any(not v["ok"] for v in r["delta"]["verdicts"].values()) for r in runs)
        table[spec] = {"delta_m": summary([r["delta"]["delta_m"] for r in runs]), "metrics": metrics,
                       "regressed": regressed, "seeds_with_regression": seeds_regressed,
                       "weights": [r["weights"] for r in runs] if all("weights" in r for r in runs) else None,
                       "flops_ratio": runs[0]["delta"].get("flops", {}).get("ratio"),
                       "parameter_ratio": runs[0]["delta"].get("parameters", {}).get("ratio")}
    base_tasks = base_records[seeds[0]]["tasks"]
    baselines = {task: {metric: summary([base_records[s]["tasks"][task]["metrics"][metric] for s in seeds])
                        for metric in base_tasks[task]["metrics"]} for task in base_tasks}
    return {"seeds": seeds, "split": base_records[seeds[0]]["split"], "primary_metric": primary,
            "balancers": table, "baselines": baselines, "commands": commands}


def _cell(s: dict[str, Any], scale: float = 1.0, signed: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    mean, std = scale * s["mean"], scale * s["std"]
    digits = 2 if signed else 3
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if len(s["values"]) > 1 else text


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table, the baselines row and the commands."""
    primary = report["primary_metric"]
    n = len(report["seeds"])
    header = (["balancer", "Δm (%)"] + [f"{t} {m}" for t, m in primary.items()]
              + ["seeds with a regression", "regressed tasks (seeds)"])
    lines = [f"Split {report['split']!r}, {n} seed(s) {report['seeds']}: mean ± sample std over seeds. "
             "Δm: per task the mean signed relative change over its metrics, then the mean over tasks "
             "(see `mmtl eval --baselines`); a regression: a task's primary metric fell more than the tolerance "
             "below its single-task model.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec, row in report["balancers"].items():
        regressed = ", ".join(f"{t} {k}/{n}" for t, k in row["regressed"].items() if k) or "none"
        cells = [spec, _cell(row["delta_m"], 100, signed=True)]
        cells += [_cell(row["metrics"][t][m]) for t, m in primary.items()]
        cells += [f"{row.get('seeds_with_regression', 0)}/{n}", regressed]
        lines.append("| " + " | ".join(cells) + " |")
    base = report["baselines"]
    lines.append("| single-task models | 0 (reference) | " + " | ".join(_cell(base[t][m]) for t, m in primary.items())
                 + " | | |")
    for spec, row in report["balancers"].items():
        if row.get("weights"):
            chosen = "; ".join(", ".join(f"{t} {w:g}" for t, w in weights.items()) for weights in row["weights"])
            lines += ["", f"{spec}: task weights chosen on the validation split, per seed: {chosen}"]
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
    parser.add_argument("--threads", type=int, help="torch threads per run (default cores // jobs)")
    parser.add_argument("--device", default="auto", help="train.device of every run and eval device (auto, cpu, cuda)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="non-regression tolerance of mmtl eval")
    parser.add_argument("--tune-weights", default="1,3",
                        help="task-weight values of the tuned-scalarisation grid (default 1,3; '' skips the row)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    balancers = [b for b in args.balancers.split(",") if b]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not balancers or not seeds or args.jobs < 1:
        parser.error("need at least one balancer, one seed and --jobs >= 1")
    try:
        tune = [float(v) for v in args.tune_weights.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--tune-weights must be comma-separated numbers, got {args.tune_weights!r}")
    out = Path(args.out)
    try:
        report = run_experiment(balancers, seeds, out, args.config, args.overrides, args.jobs, args.device,
                                args.tolerance, args.threads, tune)
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
