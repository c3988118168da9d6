"""Benchmark: does one multi-task model pay against its own single-task models, task by task, over seeds?

Usage: python tools/bench_mtl.py [--settings quickstart,shapes-medium-10,...] [--seeds 0,1,2]
           [--recipes shipped=] [--out DIR] [--jobs N] [--threads T] [--steps N] [--grouping]
           [--tolerance 0.01] [KEY=VALUE ...]

Settings (``--settings``, default ``quickstart``; ``--list`` prints them):
- ``quickstart``: the quickstart experiment as shipped (configs/experiment/quickstart.yaml, its data).
- ``shapes-{medium,hard}-{10,30,100}``: the quickstart experiment on shapes world with 10%, 30% or
  100% of its 3,000 training scenes, at that difficulty (val and test keep 200 scenes each).
- ``real``: COCO (coco_mini: recognition and captioning) mixed with SciTLDR (summarization), from
  ``../shared/data`` (or MMTL_SHARED_DATA), tiny preset. coco_mini annotates 80 train2017 images and
  79 val2017 ones; val2017 serves as val and test split.
- ``real-inet``: the closest real mix in which recognition can learn: imagenet_sample's 1,000 images
  grouped into 9 super-classes (tools/imagenet_folders.py; every fifth image held out as val and
  test) for recognition, COCO-mini captions, SciTLDR summaries; tiny preset.

For every setting and seed it prepares the data once, runs ``mmtl baselines`` (one single-task model
per task, same config, steps and seed), then every recipe (``--recipes LABEL=OVERRIDE;OVERRIDE,...``;
default ``shipped=``: the setting's config unchanged; ``{baselines}`` in an override stands for that
seed's baselines.json) with ``mmtl train`` and scores it with
``mmtl eval --baselines`` on the test split. ``--grouping`` also runs ``mmtl analyze affinity`` on
the setting and, when it recommends splitting the tasks, trains each recommended group as its own
multi-task model and reports the grouping's Δm next to all-in-one. KEY=VALUE overrides go to every
run. Finished steps are skipped, so an interrupted benchmark continues where it stopped.

It prints, per setting and recipe: each task's primary metric on both sides (mean ± std over seeds),
Δm with its spread, the seeds with a regression (a task more than ``--tolerance`` below its
single-task model) or a collapse, the cost (parameters, forward FLOPs per sample and training
seconds, multi-task against the sum of the single-task models), and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balancer_table import InlinePool, Runner, summary  # noqa: E402  (tools/ is not a package)
from imagenet_folders import write_folders  # noqa: E402

from mmtl.files import write_atomically  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "experiment" / "quickstart.yaml"
MIXED_REAL = ROOT / "configs" / "data" / "mixed_real.yaml"  # the shipped way to mix real sources
SHARED_DATA = Path(os.environ.get("MMTL_SHARED_DATA") or ROOT.parent / "shared" / "data")
TRAIN_SCENES = 3000  # the quickstart's training split


@dataclass
class Setting:
    """A data set and config: ``prepare(data_dir, runner)`` returns the config path and the overrides."""

    name: str
    description: str
    prepare: Callable[[Path, Runner], tuple[str, list[str]]]
    overrides: list[str] = field(default_factory=list)


def _synth(scenes: int, difficulty: str) -> Callable[[Path, Runner], tuple[str, list[str]]]:
    def prepare(data_dir: Path, runner: Runner) -> tuple[str, list[str]]:
        target = data_dir / f"shapes-{difficulty}-{scenes}"
        if not (target / "dataset.json").is_file():
            runner(["data", "synth", "--out", str(target), "--num", str(scenes), "--difficulty", difficulty,
                    "--seed", "0", "--overwrite"], data_dir / f"synth-{difficulty}-{scenes}.log")
        return str(QUICKSTART), [f"data.path={target}"]
    return prepare


def _convert(runner: Runner, log: Path, *argv: str) -> None:
    runner(["data", "convert", *argv, "--resize-max", "128", "--no-progress", "--overwrite"], log)


def _coco_and_tldr(data_dir: Path, runner: Runner) -> tuple[Path, Path]:
    """COCO-mini (recognition tags and captions) and SciTLDR shards, converted once."""
    for needed in ("coco_mini", "scitldr"):
        if not (SHARED_DATA / needed).is_dir():
            raise RuntimeError(f"the real settings need {SHARED_DATA / needed} (set MMTL_SHARED_DATA)")
    coco, tldr = data_dir / "real-coco", data_dir / "real-tldr"
    if not (coco / "dataset.json").is_file() or not (tldr / "dataset.json").is_file():
        shutil.rmtree(coco, ignore_errors=True)
        shutil.rmtree(tldr, ignore_errors=True)
        annotations = SHARED_DATA / "coco_mini" / "annotations"
        for split, part in (("train", "train2017"), ("val", "val2017"), ("test", "val2017")):
            _convert(runner, data_dir / f"coco-{split}.log", "--format", "coco", "--images",
                     str(SHARED_DATA / "coco_mini" / part), "--captions", str(annotations / f"captions_{part}.json"),
                     "--instances", str(annotations / f"instances_{part}.json"), "--out", str(coco), "--split", split)
        for split, name in (("train", "train"), ("val", "dev"), ("test", "test")):
            _convert(runner, data_dir / f"tldr-{split}.log", "--format", "jsonl", "--input",
                     str(SHARED_DATA / "scitldr" / f"{name}.jsonl"), "--map", "document=source", "--map",
                     "summaries=target", "--out", str(tldr), "--split", split)
    return coco, tldr


def _imagenet_super_classes(data_dir: Path, runner: Runner) -> Path:
    """imagenet_sample grouped into 9 super-classes (tools/imagenet_folders.py), as shards; its
    held-out images serve as val and test split."""
    if not (SHARED_DATA / "imagenet_sample").is_dir():
        raise RuntimeError(f"setting 'real-inet' needs {SHARED_DATA / 'imagenet_sample'} (set MMTL_SHARED_DATA)")
    inet = data_dir / "real-inet"
    if not (inet / "dataset.json").is_file():
        shutil.rmtree(inet, ignore_errors=True)
        folders = data_dir / "inet-folders"
        write_folders(SHARED_DATA / "imagenet_sample", folders, test_every=5)
        for split, part in (("train", "train"), ("val", "test"), ("test", "test")):
            _convert(runner, data_dir / f"inet-{split}.log", "--format", "imagefolder", "--root", str(folders / part),
                     "--out", str(inet), "--split", split)
    return inet


def _real_config(data_dir: Path, name: str, sources: list[dict[str, Any]]) -> str:
    """The config of a real mix: tiny preset, 300 steps, mixed and decoded as configs/data/mixed_real.yaml
    ships it (its data settings and model section, with these sources)."""
    shipped = yaml.safe_load(MIXED_REAL.read_text())
    config = data_dir / f"{name}.yaml"
    text = json.dumps({  # JSON is YAML
        "name": f"mtl-{name}", "tasks": ["recognition", "captioning", "summarization"],
        "model": {**shipped.get("model", {}), "preset": "tiny"},
        "data": {**shipped["data"], "path": sources[0]["path"], "sources": sources},
        "train": {"steps": 300, "lr": 0.002, "warmup_steps": 30},
        "eval": {"split": "test", "max_samples": 200}, "validation": {"max_samples": 200},
    }, indent=2)
    # another bench_mtl on this setting may be starting a training that reads it: never rewrite it in place
    if not config.is_file() or config.read_text() != text:
        write_atomically(config, lambda tmp: tmp.write_text(text), durable=False)
    return str(config)


def prepare_real(data_dir: Path, runner: Runner) -> tuple[str, list[str]]:
    """COCO (recognition, captioning) + SciTLDR (summarization) shards and a config mixing them."""
    coco, tldr = _coco_and_tldr(data_dir, runner)
    return _real_config(data_dir, "real", [{"path": str(coco), "tasks": ["recognition", "captioning"]},
                                           {"path": str(tldr), "tasks": ["summarization"]}]), []


def prepare_real_inet(data_dir: Path, runner: Runner) -> tuple[str, list[str]]:
    """ImageNet super-classes (recognition) + COCO (captioning) + SciTLDR (summarization)."""
    coco, tldr = _coco_and_tldr(data_dir, runner)
    inet = _imagenet_super_classes(data_dir, runner)
    return _real_config(data_dir, "real-inet", [{"path": str(inet), "tasks": ["recognition"]},
                                                {"path": str(coco), "tasks": ["captioning"]},
                                                {"path": str(tldr), "tasks": ["summarization"]}]), []


def settings() -> dict[str, Setting]:
    """Every setting by name (see the module docstring)."""
    out = {"quickstart": Setting("quickstart", "the quickstart experiment as shipped", _synth(TRAIN_SCENES, "medium"))}
    for difficulty in ("medium", "hard"):
        for percent in (10, 30, 100):
            scenes = TRAIN_SCENES * percent // 100
            out[f"shapes-{difficulty}-{percent}"] = Setting(
                f"shapes-{difficulty}-{percent}", f"shapes world, {difficulty}, {percent}% ({scenes}) of the training "
                "scenes", _synth(scenes, difficulty))
    out["real"] = Setting("real", "COCO recognition + captioning, SciTLDR summarization (tiny, 300 steps)", prepare_real)
    out["real-inet"] = Setting("real-inet", "ImageNet super-class recognition, COCO captioning, SciTLDR summarization "
                               "(tiny, 300 steps)", prepare_real_inet)
    return out


class Bench:
    """The runs of one setting: data, baselines and recipes per seed (each step skipped when done)."""

    def __init__(self, out: Path, runner: Runner, config: str, common: list[str], tolerance: float) -> None:
        self.out, self.runner, self.config, self.common, self.tolerance = out, runner, config, common, tolerance

    def _timed(self, argv: list[str], log: Path, seconds: Path) -> None:
        started = time.perf_counter()
        self.runner(argv, log)
        seconds.write_text(f"{time.perf_counter() - started:.1f}\n")

    def baselines(self, seed: int) -> Path:
        """OUT/seed-S/baselines/baselines.json, trained unless it exists."""
        target = self.out / f"seed-{seed}" / "baselines"
        if not (target / "baselines.json").is_file():
            self._timed(["baselines", "--config", self.config, *self.common, f"seed={seed}",
                         f"output_dir={target}-mt", "--resume", "--out", str(target)],
                        target / "run.log", target / "seconds.txt")
        return target / "baselines.json"

    def recipe(self, label: str, extra: list[str], seed: int, base: Future, tasks: list[str] | None = None) -> Path:
        """Train recipe ``label`` (``extra`` overrides; ``tasks``: a subset) with ``seed`` and score it."""
        return self.score(self.train(label, extra, seed, base, tasks), base)

    def train(self, label: str, extra: list[str], seed: int, base: Future, tasks: list[str] | None = None) -> Path:
        """Train recipe ``label`` with ``seed`` unless trained; its run folder."""
        run = self.out / f"seed-{seed}" / label
        if not (run / "train.done").is_file() and not (run / "eval.json").is_file():
            if any("{baselines}" in o for o in extra):  # e.g. validation.baselines={baselines} (protect mode)
                extra = [o.replace("{baselines}", str(base.result())) for o in extra]
            subset = [f"tasks=[{','.join(tasks)}]"] if tasks else []
            self._timed(["train", "--config", self.config, *self.common, *extra, *subset, f"seed={seed}",
                         f"output_dir={run}", "train.overwrite=true"], run / "train.log", run / "seconds.txt")
            (run / "train.done").touch()
        return run

    def score(self, run: Path | Future, base: Future) -> Path:
        """`mmtl eval --baselines` of a trained run (unless scored); its eval.json."""
        run = run.result() if isinstance(run, Future) else run
        result = run / "eval.json"
        if result.is_file():
            return result
        baselines = base.result()
        record = json.loads(baselines.read_text())
        samples = record.get("max_samples") or 0
        # the data comes from the run's own config (a checkpoint's data settings are never read)
        self.runner(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"), "--baselines",
                     str(baselines), "--split", record["split"],
                     "--max-samples", str(samples), "--tolerance", str(self.tolerance), "--output", str(result)],
                    run / "eval.log")
        return result

    def affinity(self) -> list[list[str]]:
        """The task groups `mmtl analyze affinity` recommends for this setting (seed 0)."""
        target = self.out / "affinity"
        if not (target / "affinity.json").is_file():
            self.runner(["analyze", "affinity", "--config", self.config, *self.common, "seed=0",
                         f"output_dir={target}/run", "train.overwrite=true", "--out", str(target)], target / "run.log")
        return json.loads((target / "affinity.json").read_text())["groups"]


def _primary(record: dict[str, Any]) -> dict[str, tuple[str, float, float]]:
    """{task: (primary metric, multi-task value, single-task value)} of one eval record."""
    return {t: (v["metric"], v["model"], v["baseline"]) for t, v in record["delta"]["verdicts"].items()}


def _spread(values: list[float]) -> float | None:
    """Sample standard deviation over mean of ``values`` (None for fewer than two or a zero mean)."""
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return statistics.stdev(values) / abs(statistics.fmean(values))


def aggregate(records: dict[int, dict[str, Any]], base_seconds: dict[int, float | None],
              seconds: dict[int, float | None], tolerance: float = 0.01) -> dict[str, Any]:
    """One recipe of one setting over seeds: per task both sides, Δm, regressions, collapses and the cost.

    ``single_task_spread``: how far the single-task models of one task differ from seed to seed
    (std / mean); ``noisy_tasks`` are those whose spread exceeds ``tolerance``, where a per-seed
    verdict at that tolerance compares two models further apart than the rule can resolve."""
    seeds = sorted(records)
    first = records[seeds[0]]
    tasks: dict[str, Any] = {}
    for task, (metric, _, _) in _primary(first).items():
        verdicts = {s: records[s]["delta"]["verdicts"][task] for s in seeds}
        tasks[task] = {"metric": metric,
                       "multi_task": summary([verdicts[s]["model"] for s in seeds]),
                       "single_task": summary([verdicts[s]["baseline"] for s in seeds]),
                       "change": summary([verdicts[s]["change"] for s in seeds]),
                       "regressed_seeds": [s for s in seeds if not verdicts[s]["ok"]],
                       "collapsed_seeds": [s for s in seeds if verdicts[s].get("collapsed")],
                       "better_seeds": [s for s in seeds if (verdicts[s]["change"] or 0) > 0],
                       "single_task_spread": _spread([verdicts[s]["baseline"] for s in seeds])}
    delta = first["delta"]
    known = lambda values: [v for v in values if v is not None]  # noqa: E731
    train_s, base_s = known(seconds.values()), known(base_seconds.values())
    return {"seeds": seeds, "tasks": tasks, "delta_m": summary([records[s]["delta"]["delta_m"] for s in seeds]),
            "seeds_with_regression": [s for s in seeds if records[s]["delta"]["regressed"]],
            "noisy_tasks": [t for t, v in tasks.items() if (v["single_task_spread"] or 0) > tolerance],
            "parameter_share": 1 / delta["parameters"]["ratio"] if "parameters" in delta else None,
            "flops_share": 1 / delta["flops"]["ratio"] if "flops" in delta else None,
            "train_seconds": statistics.fmean(train_s) if train_s else None,
            "single_task_seconds": statistics.fmean(base_s) if base_s else None}


def _cell(s: dict[str, Any], scale: float = 1.0, signed: bool = False, digits: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    text = f"{scale * s['mean']:+.{digits}f}" if signed else f"{scale * s['mean']:.{digits}f}"
    return f"{text} ± {scale * s['std']:.{digits}f}" if len(s["values"]) > 1 else text


def format_report(name: str, description: str, label: str, row: dict[str, Any]) -> str:
    """The table of one setting and recipe, then its Δm, regressions and cost lines."""
    lines = [f"## {name}: {description}; recipe {label!r}, seeds {row['seeds']}", "",
             "| task | metric | multi-task | single-task | change | seeds regressed | seeds better |",
             "|---|---|---|---|---|---|---|"]
    n = len(row["seeds"])
    for task, t in row["tasks"].items():
        collapsed = f" (collapsed: {t['collapsed_seeds']})" if t["collapsed_seeds"] else ""
        lines.append(f"| {task} | {t['metric']} | {_cell(t['multi_task'])} | {_cell(t['single_task'])} | "
                     f"{_cell(t['change'], 100, True, 1)}% | {len(t['regressed_seeds'])}/{n}{collapsed} | "
                     f"{len(t['better_seeds'])}/{n} |")
    values = ", ".join("n/a" if v is None else f"{100 * v:+.2f}%" for v in row["delta_m"]["values"])
    lines += ["", f"Δm = {_cell(row['delta_m'], 100, True, 2)}% (per seed: {values}); "
              f"seeds with a regression: {row['seeds_with_regression'] or 'none'}"]
    spreads = [f"{task} {100 * t['single_task_spread']:.1f}%" for task, t in row["tasks"].items()
               if t["single_task_spread"] is not None]
    if spreads:
        lines.append("single-task spread over seeds (std / mean): " + ", ".join(spreads)
                     + (f"; wider than the tolerance for {', '.join(row['noisy_tasks'])}: a per-seed verdict there "
                        "compares models that differ more from seed to seed than the rule resolves"
                        if row["noisy_tasks"] else ""))
    cost = []
    if row["parameter_share"] is not None:
        cost.append(f"parameters {100 * row['parameter_share']:.1f}%")
    if row["flops_share"] is not None:
        cost.append(f"forward FLOPs {100 * row['flops_share']:.1f}%")
    if row["train_seconds"] and row["single_task_seconds"]:
        cost.append(f"wall time `mmtl train` {row['train_seconds']:.0f} s against `mmtl baselines` "
                    f"{row['single_task_seconds']:.0f} s (its trainings plus two evaluations of each model)")
    if cost:
        lines.append("cost of the multi-task model against the separate single-task models: " + ", ".join(cost))
    return "\n".join(lines)


def _seconds(path: Path) -> float | None:
    return float(path.read_text()) if path.is_file() else None


def grouping_delta(bench: Bench, groups: list[list[str]], seed: int, base: Future) -> dict[str, Any]:
    """Each recommended group trained as its own model; per-task changes pooled into one Δm."""
    per_task: dict[str, float] = {}
    verdicts: dict[str, Any] = {}
    for group in groups:
        if len(group) == 1:  # a task alone is its own single-task model: change 0 by definition
            per_task[group[0]], verdicts[group[0]] = 0.0, {"ok": True, "change": 0.0}
            continue
        record = json.loads(bench.recipe("group-" + "+".join(group), [], seed, base, group).read_text())
        per_task.update(record["delta"]["per_task"])
        verdicts.update(record["delta"]["verdicts"])
    delta = statistics.fmean(per_task.values()) if per_task else None
    return {"groups": groups, "delta_m": delta, "regressed": [t for t, v in verdicts.items() if not v["ok"]]}


def run_setting(setting: Setting, seeds: list[int], recipes: dict[str, list[str]], out: Path, runner: Runner,
                overrides: list[str], tolerance: float, jobs: int, grouping: bool) -> dict[str, Any]:
    """Data, baselines, recipes (and the grouping check) of one setting; the aggregated results."""
    config, extra = setting.prepare(out / "data", runner)
    common = [*extra, *setting.overrides, *overrides, "train.progress=false"]
    bench = Bench(out / setting.name, runner, config, common, tolerance)
    with (ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else InlinePool()) as pool:
        bases = {seed: pool.submit(bench.baselines, seed) for seed in seeds}
        # trains that need no baselines first, scoring last: a worker waiting on a future holds its slot
        order = sorted(recipes.items(), key=lambda item: any("{baselines}" in o for o in item[1]))
        trains = {(label, seed): pool.submit(bench.train, label, extra_overrides, seed, bases[seed])
                  for label, extra_overrides in order for seed in seeds}
        runs = {(label, seed): pool.submit(bench.score, trains[(label, seed)], bases[seed])
                for label in recipes for seed in seeds}
        results = {key: json.loads(f.result().read_text()) for key, f in runs.items()}
    report: dict[str, Any] = {"description": setting.description, "recipes": {}}
    for label in recipes:
        records = {seed: results[(label, seed)] for seed in seeds}
        report["recipes"][label] = aggregate(
            records, {s: _seconds(bench.out / f"seed-{s}" / "baselines" / "seconds.txt") for s in seeds},
            {s: _seconds(bench.out / f"seed-{s}" / label / "seconds.txt") for s in seeds}, tolerance)
    if grouping:
        groups = bench.affinity()
        report["grouping"] = {"groups": groups, "all_in_one": report["recipes"][next(iter(recipes))]["delta_m"]}
        if len(groups) > 1:
            report["grouping"]["recommended"] = summary(
                [grouping_delta(bench, groups, seed, bases[seed])["delta_m"] for seed in seeds])
    return report


def parse_recipes(specs: list[str]) -> dict[str, list[str]]:
    """``LABEL=OVERRIDE;OVERRIDE`` items -> {label: overrides}; ValueError naming an item whose
    overrides are not ``KEY=VALUE`` (e.g. a run-wide ``train.lr=0.001`` written after ``--recipes``)."""
    recipes = {}
    for spec in specs:
        label, _, rest = spec.partition("=")
        overrides = [o for o in rest.split(";") if o]
        if not label or any("=" not in o for o in overrides):
            raise ValueError(f"--recipes item {spec!r} is not LABEL=KEY=VALUE;KEY=VALUE... (run-wide KEY=VALUE "
                             "overrides go before --recipes or after --)")
        recipes[label] = overrides
    return recipes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--settings", default="quickstart", help="comma-separated settings (see --list)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--recipes", nargs="*", default=["shipped="],
                        help="LABEL=OVERRIDE;OVERRIDE... multi-task recipes (default: shipped=, the config as is)")
    parser.add_argument("--out", default="runs/bench-mtl", help="output directory (default runs/bench-mtl)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes when > 1)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default cores // jobs)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative drop counted as a regression (0.01)")
    parser.add_argument("--grouping", action="store_true", help="also check the grouping `mmtl analyze affinity` "
                                                                "recommends against all-in-one")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    known = settings()
    if args.list:
        print("\n".join(f"{name}: {s.description}" for name, s in known.items()))
        return 0
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(known)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    jobs = max(1, args.jobs)
    runner = Runner(jobs, args.threads or max(1, (os.cpu_count() or 1) // jobs))
    try:
        recipes = parse_recipes(args.recipes)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    report: dict[str, Any] = {"bench": "mtl", "seeds": seeds, "settings": {}}
    try:
        for name in names:
            report["settings"][name] = run_setting(known[name], seeds, recipes, out, runner, args.overrides,
                                                   args.tolerance, jobs, args.grouping)
    except RuntimeError as exc:
        print(f"bench_mtl: error: {exc}", file=sys.stderr)
        return 2
    text = "\n\n".join(format_report(name, part["description"], label, row)
                       for name, part in report["settings"].items() for label, row in part["recipes"].items())
    for name, part in report["settings"].items():
        if "grouping" in part:
            g = part["grouping"]
            recommended = g.get("recommended")
            text += (f"\n\n{name}: affinity recommends {g['groups']}; Δm all-in-one {_cell(g['all_in_one'], 100, True, 2)}%"
                     + (f", recommended grouping {_cell(recommended, 100, True, 2)}%" if recommended else
                        " (one group: the all-in-one model)"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n\nCommands:\n\n" + "\n".join(runner.commands) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(text)
    print(json.dumps({"bench": "mtl", "seeds": seeds, "summary": {
        f"{name}/{label}": {"delta_m": row["delta_m"]["mean"], "delta_m_std": row["delta_m"]["std"],
                            "regressed": {t: len(v["regressed_seeds"]) for t, v in row["tasks"].items()},
                            "single_task_spread": {t: v["single_task_spread"] for t, v in row["tasks"].items()},
                            "parameter_share": row["parameter_share"], "flops_share": row["flops_share"]}
        for name, part in report["settings"].items() for label, row in part["recipes"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
