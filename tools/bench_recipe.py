"""Benchmark: mmtl single-task training next to a plain PyTorch reference, in the same run.

Usage: python tools/bench_recipe.py [--data DIR [--eval-split test] | --real]
           [--tasks recognition,captioning,summarization] [--steps 560] [--seeds 0,1,2] [--preset tiny]
           [--batch-size 32] [--max-eval N] [--cache DIR] [--set KEY=VALUE ...]
           [--profile | --profile-only] [--profile-steps 60] [--cnn [--cnn-factor 2]] [--clock wall|cpu]

For every data set, task and seed:
  mmtl       ``mmtl.training.loop.train`` with ``tasks=[task]`` (the preset's recipe otherwise unchanged),
             scored by ``mmtl.evaluation.evaluate.evaluate``, which also gives the trivial baseline;
  reference  tools/recipe_reference.py: the same timm backbone (``model.image.timm_model`` and
             ``timm_kwargs`` the preset resolves to) or a same-size nn.Transformer text model, the
             simplest head, AdamW with the preset's lr / weight decay / warm-up + schedule / clipping,
             the same data (read from the shard tars into memory), steps and batch size, greedy
             decoding, scored by the same mmtl task object's ``score()``.
Equal steps: both train ``--steps`` steps. Equal time: the budget is the faster one's time for
``--steps`` steps (mmtl: ``TrainResult.step_seconds``, its steps with their data fetches, without
setup, FLOP counting, checkpoints and plots; reference: decoding the train split into memory plus
its loop; model building is outside both, each side's first step inside); the slower one is trained
again, from scratch with its full schedule, for the steps that fit in that budget at its measured rate
(at least 1), and scored. ``--clock`` picks how both sides' times are read: ``wall`` (default,
``time.perf_counter``) or ``cpu`` (``time.process_time``, this process's CPU seconds: at one thread on
a CPU the work done, unmoved by other load on the machine; it misses a GPU's work and a loader
worker's, so it is refused with ``data.num_workers`` > 0 or a GPU).
``--data`` takes any shard directory with a dataset.json (``mmtl data convert``) holding a ``train`` split and
the ``--eval-split``; ``--tasks`` defaults to every task its train split supervises, and naming one it does
not supervise, a missing directory or split is a one-line error (exit 2).
``--profile`` adds, per data set and task, a step profile at one thread (tools/step_profile.py): mmtl's
step cut into data, host->device, encoders, fusion, heads, loss, backward, clipping, optimiser, schedule
and bookkeeping, next to the reference's (data from memory, forward, loss, backward, step), their steps
alternating; ``--profile-only`` skips the accuracy runs.
``--cnn`` adds, for every task that classifies images, a third side: a 2-convolution CNN in a plain loop
(tools/cnn_reference.py) on the reference's decoded rows, ``--steps`` steps, timed in CPU seconds
(``time.process_time``: its share of the decoding plus its loop); mmtl's whole ``train`` call is timed
the same way, and mmtl is trained again, from scratch, for the steps that fit in ``--cnn-factor`` times
the CNN's CPU seconds at mmtl's CPU rate (setup counted in both), and scored: issue #29's "reaches the
2-convolution CNN's accuracy in <= 2x its CPU time".
Without ``--data`` / ``--real`` the data is shapes world written into a temp dir like the quickstart.
``--real`` converts the sets in ``<repo>/../shared/data`` (or $MMTL_SHARED_DATA) once into ``--cache``.
Prints a table (mean ± std over seeds) and ends with one JSON line: mmtl / reference ratios of the
primary metric per data set and task, at equal steps and at equal time (``--clock``); for generation tasks the
results also hold both sides' distinct-2 and repetition rate (how degenerate the generated texts are);
with ``--profile`` a ``profile`` entry holds each side's parts (ms per step) and mmtl's step-time ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import mmtl.components  # noqa: E402,F401  (registers the components that configs name)
from mmtl.builder import Components, components_from_data  # noqa: E402
from mmtl.config import ExperimentConfig, load_config  # noqa: E402
from mmtl.errors import MMTLError  # noqa: E402
from mmtl.evaluation.evaluate import evaluate  # noqa: E402
from mmtl.training.run import train  # noqa: E402
from mmtl.precision import resolve_device  # noqa: E402
from recipe_reference import Prepared, Reference, ReferenceTraining, prepare, read_split, train_reference  # noqa: E402
from cnn_reference import classifies_images, train_cnn  # noqa: E402
from recipe_data import ALL_TASKS, DataSet, select_datasets  # noqa: E402
from step_profile import PartClock, compare_profiles, format_profile, profile_mmtl, summarize_parts  # noqa: E402

# degeneration of generated text (mmtl.tasks.metrics.diversity), reported beside the primary metric
TEXT_QUALITY = ("distinct2", "repetition")
# the --cnn side's figures in a row (tools/cnn_reference.py)
CNN_KEYS = ("cnn", "cnn_cpu_seconds", "mmtl_cpu_seconds", "mmtl_at_cnn_time", "mmtl_at_cnn_time_steps",
            "mmtl_at_cnn_time_cpu_seconds")


def base_config(data: DataSet, task: str, args: argparse.Namespace, seed: int, steps: int, out: Path) -> ExperimentConfig:
    """mmtl's single-task config: built-in defaults (the quickstart's recipe) for one task and seed."""
    overrides = [f"data.path={data.path}", f"tasks=[{task}]", f"model.preset={args.preset}", f"seed={seed}",
                 f"data.batch_size={args.batch_size}", f"eval.split={data.eval_split}", f"output_dir={out}",
                 "train.overwrite=true", "train.progress=false", "train.checkpoint_every=0", *args.set]
    if args.max_eval:  # an eval batch that divides N, so that mmtl scores exactly N samples too
        overrides.append(f"eval.batch_size={max(d for d in range(1, 65) if args.max_eval % d == 0)}")
    warmup = load_config(None, overrides).train.warmup_steps
    return load_config(None, [*overrides, f"train.steps={steps}", f"train.warmup_steps={min(warmup, max(1, steps // 10))}"])


def run_mmtl(config: ExperimentConfig, max_eval: int) -> dict[str, Any]:
    """Train and evaluate mmtl on the config's single task; primary metric, baseline, the steps' time on
    each clock (``clock``; ``seconds``: wall) and CPU seconds (the whole ``train`` call, setup included)."""
    cpu = time.process_time()
    result = train(config)
    cpu = time.process_time() - cpu
    device = next(result.components.model.parameters()).device
    evaluation = evaluate(result.components, config, device, max_samples=max_eval)
    task = config.tasks[0]
    metric = evaluation.primary[task]
    return {"metric": evaluation.metrics[task][metric], "baseline": evaluation.baselines[task][metric],
            "seconds": result.step_seconds, "clock": {"wall": result.step_seconds, "cpu": result.step_cpu_seconds},
            "cpu_seconds": cpu, "samples": evaluation.samples, "name": metric, "text": text_quality(evaluation.metrics[task])}


def text_quality(metrics: dict[str, float]) -> dict[str, float]:
    """How degenerate generated texts are (distinct-2, repetition); empty for tasks that generate none."""
    return {key: metrics[key] for key in TEXT_QUALITY if key in metrics}


class ReferenceBench:
    """The reference side for one data set: its samples decoded once, reused by every task and seed."""

    def __init__(self, data: DataSet, config: ExperimentConfig, max_eval: int) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        size = config.model.image.image_size
        self.train_samples = read_split(data.path, config.data.train_split, size)
        self.load_seconds = time.perf_counter() - started
        self.load_cpu_seconds = time.process_time() - cpu
        self.eval_samples = read_split(data.path, data.eval_split, size, max_eval)

    @property
    def load(self) -> dict[str, float]:
        """Decoding the train split into memory, in seconds on each clock."""
        return {"wall": self.load_seconds, "cpu": self.load_cpu_seconds}

    def _rows(self, config: ExperimentConfig) -> tuple[Components, Prepared, Prepared, torch.device]:
        """The task of ``config``, its train and eval rows and the device mmtl trains on."""
        components = components_from_data(config)
        task = components.tasks[0]
        labels = {name: i for i, name in enumerate(components.classes)}
        train_rows = prepare(task, self.train_samples, components.vocab, config, labels)
        eval_rows = prepare(task, self.eval_samples, components.vocab, config, labels)
        device = resolve_device(config.train.device)  # where mmtl trains: a GPU when there is one
        return components, train_rows, eval_rows, device

    def run(self, config: ExperimentConfig, steps: int, seed: int) -> dict[str, Any]:
        """Train and score the reference for ``config``'s task; its times (``clock``; ``seconds``: wall)
        include decoding the train split."""
        components, train_rows, eval_rows, device = self._rows(config)
        task = components.tasks[0]
        run = train_reference(task, components.vocab, config, train_rows, eval_rows, steps, seed, device)
        clock = {"wall": self.load_seconds + run.seconds, "cpu": self.load_cpu_seconds + run.cpu_seconds}
        return {"metric": run.metrics[task.primary_metric], "seconds": clock["wall"], "clock": clock,
                "train_seconds": run.seconds, "losses": run.losses, "text": text_quality(run.metrics)}

    def run_cnn(self, config: ExperimentConfig, steps: int, seed: int) -> dict[str, Any]:
        """Train and score the 2-convolution CNN on ``config``'s task; CPU seconds include decoding the train split."""
        components, train_rows, eval_rows, _ = self._rows(config)
        run = train_cnn(components.tasks[0], train_rows, eval_rows, steps, config.data.batch_size, seed,
                        config.eval.threshold)
        return {"metric": run.metrics[components.tasks[0].primary_metric], "train_cpu_seconds": run.cpu_seconds,
                "cpu_seconds": self.load_cpu_seconds + run.cpu_seconds}

    def start_profile(self, config: ExperimentConfig, steps: int, seed: int) -> tuple[ReferenceTraining, PartClock]:
        """A reference training of ``steps`` steps for ``config``'s task whose steps a new clock times."""
        components, train_rows, _, device = self._rows(config)
        torch.manual_seed(seed)
        clock = PartClock(device)
        reference = Reference(components.tasks[0], components.vocab, config, device)
        return ReferenceTraining(reference, train_rows, steps, seed, clock), clock

    def shard_read_ms(self, batch_size: int) -> float:
        """Milliseconds to read and decode one batch from the shard tars, at the rate this bench read them."""
        return round(1000 * self.load_seconds * batch_size / max(1, len(self.train_samples)), 3)


def steps_in(budget: float, seconds: float, steps: int, fixed: float = 0.0) -> int:
    """Steps that fit in ``budget`` at the rate of ``steps`` steps in ``seconds`` (``fixed``: one-off cost)."""
    return max(1, int(steps * (budget - fixed) / max(seconds - fixed, 1e-9)))


def bench_task(data: DataSet, task: str, args: argparse.Namespace, seed: int, reference: ReferenceBench,
               runs: Path) -> dict[str, Any]:
    """One task and seed: both systems at equal steps, then the slower one again at equal time (``--clock``)."""
    steps = args.steps
    config = base_config(data, task, args, seed, steps, runs / f"{data.name}-{task}-{seed}")
    mmtl = run_mmtl(config, args.max_eval)
    ref = reference.run(config, steps, seed)
    cnn = {}
    if args.cnn and classifies_images(components_from_data(config).tasks[0]):
        cnn = cnn_row(data, args, seed, reference, mmtl, config, runs / f"{data.name}-{task}-{seed}-cnn")
    window = max(1, min(10, steps // 4))  # steps whose mean loss is reported at the start and the end
    row = {"seed": seed, "metric": mmtl["name"], "baseline": mmtl["baseline"], "mmtl": mmtl["metric"],
           "reference": ref["metric"], "mmtl_seconds": mmtl["seconds"], "reference_seconds": ref["seconds"],
           "mmtl_step_cpu_seconds": mmtl["clock"]["cpu"], "reference_step_cpu_seconds": ref["clock"]["cpu"],
           "reference_first_loss": statistics.fmean(ref["losses"][:window]),
           "reference_last_loss": statistics.fmean(ref["losses"][-window:]),
           **{f"mmtl_{k}": v for k, v in mmtl["text"].items()}, **{f"reference_{k}": v for k, v in ref["text"].items()},
           **cnn}
    row.update(equal_time(config, data, args, reference, runs, mmtl, ref))
    print(f"  {data.name}/{task} seed {seed}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def equal_time(config: ExperimentConfig, data: DataSet, args: argparse.Namespace, reference: ReferenceBench,
               runs: Path, mmtl: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The slower side of ``mmtl`` and ``ref`` (their runs of ``config``, on ``--clock``) trained again for the
    steps that fit in the faster one's time for ``--steps``; both sides' scores, steps and times at equal time."""
    steps, clock, task, seed = args.steps, args.clock, config.tasks[0], config.seed
    if ref["clock"][clock] <= mmtl["clock"][clock]:  # mmtl is slower: the steps that fit in the reference's time
        cut = steps_in(ref["clock"][clock], mmtl["clock"][clock], steps)
        cut_config = base_config(data, task, args, seed, cut, runs / f"{data.name}-{task}-{seed}-cut")
        ours, theirs = run_mmtl(cut_config, args.max_eval), ref
        ours_steps, theirs_steps = cut, steps
    else:  # the reference is slower: the steps that fit in mmtl's time (its decoding a one-off cost)
        cut = steps_in(mmtl["clock"][clock], ref["clock"][clock], steps, reference.load[clock])
        ours, theirs = mmtl, reference.run(config, cut, seed)
        ours_steps, theirs_steps = steps, cut
    return {"mmtl_time": ours["metric"], "mmtl_time_steps": ours_steps, "mmtl_time_seconds": ours["clock"][clock],
            "reference_time": theirs["metric"], "reference_time_steps": theirs_steps,
            "reference_time_seconds": theirs["clock"][clock]}


def cnn_row(data: DataSet, args: argparse.Namespace, seed: int, reference: ReferenceBench,
            mmtl: dict[str, Any], config: ExperimentConfig, out: Path) -> dict[str, Any]:
    """The CNN at ``--steps`` steps, and mmtl retrained for the steps that fit in ``--cnn-factor`` times the
    CNN's CPU seconds (at the CPU rate of ``mmtl``, its run at ``--steps``; at most ``--steps``)."""
    cnn = reference.run_cnn(config, args.steps, seed)
    cut = min(args.steps, steps_in(args.cnn_factor * cnn["cpu_seconds"], mmtl["cpu_seconds"], args.steps))
    task = config.tasks[0]
    # the budget holds all of --steps: the equal-steps run is mmtl's run at the CNN's time
    at_cnn = run_mmtl(base_config(data, task, args, seed, cut, out), args.max_eval) if cut < args.steps else mmtl
    return {"cnn": cnn["metric"], "cnn_cpu_seconds": cnn["cpu_seconds"], "mmtl_cpu_seconds": mmtl["cpu_seconds"],
            "mmtl_at_cnn_time": at_cnn["metric"], "mmtl_at_cnn_time_steps": cut,
            "mmtl_at_cnn_time_cpu_seconds": at_cnn["cpu_seconds"]}


def profile_task(data: DataSet, task: str, args: argparse.Namespace, reference: ReferenceBench,
                 runs: Path) -> dict[str, Any]:
    """Both sides' step parts at one thread (first seed, ``--profile-steps`` steps), one mmtl step then
    one reference step, so that load from elsewhere on the machine falls on both alike."""
    steps, seed, threads = args.profile_steps, args.seeds[0], torch.get_num_threads()
    skip = max(1, steps // 10)
    config = base_config(data, task, args, seed, steps, runs / f"{data.name}-{task}-profile")
    torch.set_num_threads(1)
    try:
        training, clock = reference.start_profile(config, steps, seed)

        def reference_step() -> None:
            training.step()
            clock.mark("bookkeeping")  # its loss read back; then its clock waits for its next step
            clock.pause()

        ours = profile_mmtl(config, skip, interlude=reference_step)[0]
    finally:
        torch.set_num_threads(threads)
    theirs = {**summarize_parts(clock.steps, skip), "shard_read_ms": reference.shard_read_ms(config.data.batch_size)}
    comparison = compare_profiles(ours, theirs)
    print(format_profile(f"{data.name}/{task}", comparison), flush=True)
    return comparison


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is 0."""
    return round(numerator / denominator, 4) if denominator else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each measured figure, and the two ratios of the means."""
    def mean_std(key: str) -> list[float]:
        values = [float(r[key]) for r in rows]
        return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    keys = ("baseline", "mmtl", "reference", "mmtl_time", "reference_time", "mmtl_time_steps",
            "reference_time_steps", "mmtl_time_seconds", "reference_time_seconds", "mmtl_seconds", "reference_seconds",
            "mmtl_step_cpu_seconds", "reference_step_cpu_seconds", "reference_first_loss", "reference_last_loss")
    keys += tuple(f"{side}_{k}" for side in ("mmtl", "reference") for k in TEXT_QUALITY if f"{side}_{k}" in rows[0])
    keys += tuple(k for k in CNN_KEYS if k in rows[0])
    out: dict[str, Any] = {"metric": rows[0]["metric"], **{k: mean_std(k) for k in keys}}
    out["ratio_equal_steps"] = ratio(out["mmtl"][0], out["reference"][0])
    out["ratio_equal_time"] = ratio(out["mmtl_time"][0], out["reference_time"][0])
    if "cnn" in out:
        out["cnn_ratio_equal_steps"] = ratio(out["mmtl"][0], out["cnn"][0])
        out["cnn_ratio_at_cnn_time"] = ratio(out["mmtl_at_cnn_time"][0], out["cnn"][0])
    return out


def format_table(results: dict[str, dict[str, Any]], clock: str = "wall") -> str:
    """A plain-text table of the summarized results (mean ± std over seeds); both sides' seconds on ``clock``."""
    def cell(pair: list[float], digits: int = 3) -> str:
        return f"{pair[0]:.{digits}f}±{pair[1]:.{digits}f}"

    head = ("data/task", "metric", "baseline", "mmtl", "reference", "ratio", "mmtl@time (steps)",
            "ref@time (steps)", "ratio@time", f"mmtl {clock} s", f"ref {clock} s")
    seconds = "seconds" if clock == "wall" else "step_cpu_seconds"
    lines = [head]
    for name, r in results.items():
        lines.append((name, r["metric"], cell(r["baseline"]), cell(r["mmtl"]), cell(r["reference"]),
                      str(r["ratio_equal_steps"]), f"{cell(r['mmtl_time'])} ({r['mmtl_time_steps'][0]:.0f})",
                      f"{cell(r['reference_time'])} ({r['reference_time_steps'][0]:.0f})", str(r["ratio_equal_time"]),
                      cell(r[f"mmtl_{seconds}"], 0), cell(r[f"reference_{seconds}"], 0)))
    cnn = [("data/task", "cnn", "cnn cpu s", "mmtl cpu s", "mmtl/cnn", "mmtl@cnn cpu x factor", "ratio@cnn time")]
    cnn += [(name, cell(r["cnn"]), cell(r["cnn_cpu_seconds"], 1), cell(r["mmtl_cpu_seconds"], 1),
             str(r["cnn_ratio_equal_steps"]), f"{cell(r['mmtl_at_cnn_time'])} ({r['mmtl_at_cnn_time_steps'][0]:.0f} "
             f"steps, {r['mmtl_at_cnn_time_cpu_seconds'][0]:.1f} cpu s)", str(r["cnn_ratio_at_cnn_time"]))
            for name, r in results.items() if "cnn" in r]
    return "\n\n".join(aligned(table) for table in (lines, cnn) if len(table) > 1)


def aligned(lines: list[tuple[str, ...]]) -> str:
    """Rows of cells as text columns."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def check_clock(config: ExperimentConfig, clock: str) -> None:
    """Refuse the CPU clock where it would miss one side's work: a GPU's, or the loader workers' processes."""
    device = resolve_device(config.train.device)
    if clock == "cpu" and (device.type != "cpu" or config.data.num_workers > 0):
        raise MMTLError(f"--clock cpu counts this process's CPU seconds only; it cannot time training on {device} "
                        f"with data.num_workers={config.data.num_workers} (use --clock wall)")


def run_bench(datasets: list[DataSet], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every data set, task and seed; returns the final JSON object."""
    results: dict[str, dict[str, Any]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    for data in datasets:
        first = base_config(data, data.tasks[0], args, 0, args.steps, workdir / "probe")
        check_clock(first, args.clock)
        reference = ReferenceBench(data, first, args.max_eval)
        print(f"{data.name}: {len(reference.train_samples)} train samples decoded in "
              f"{reference.load_seconds:.1f}s; tasks {', '.join(data.tasks)}", flush=True)
        for task in data.tasks:
            if not args.profile_only:
                rows = [bench_task(data, task, args, seed, reference, workdir / "runs") for seed in args.seeds]
                results[f"{data.name}/{task}"] = summarize(rows)
            if args.profile or args.profile_only:
                profiles[f"{data.name}/{task}"] = profile_task(data, task, args, reference, workdir / "runs")
    if results:
        print(format_table(results, args.clock))
    out = {"bench": "recipe", "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size, "clock": args.clock,
           "overrides": args.set, "seeds": args.seeds, **({"cnn_factor": args.cnn_factor} if args.cnn else {}), "threads": torch.get_num_threads(),
           "ratios": {k: {"equal_steps": r["ratio_equal_steps"], "equal_time": r["ratio_equal_time"],
                          **({"cnn_equal_steps": r["cnn_ratio_equal_steps"], "cnn_time_x_factor": r["cnn_ratio_at_cnn_time"]}
                             if "cnn" in r else {})}
                      for k, r in results.items()},
           "results": results}
    if profiles:
        out["profile"] = {"steps": args.profile_steps, "threads": 1, **profiles}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="an mmtl shard directory, e.g. one written by `mmtl data convert` "
                                       "(default: shapes world in a temp dir)")
    parser.add_argument("--eval-split", default="test", help="held-out split of --data (default test)")
    parser.add_argument("--real", action="store_true", help="the real sets in ../shared/data instead")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated, from {','.join(ALL_TASKS)} (default: every one the data supervises)")
    parser.add_argument("--steps", type=int, default=560)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-eval", type=int, default=0, help="score at most N held-out samples (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an mmtl config override for the mmtl side (repeatable), e.g. "
                             "task_settings.summarization.mode=extractive; the reference is unchanged")
    parser.add_argument("--profile", action="store_true",
                        help="also time each side's step parts at one thread (data, forward, backward, optimiser, "
                             "...; see tools/step_profile.py), print them and add them to the JSON line")
    parser.add_argument("--profile-only", action="store_true", help="the step profile alone (no accuracy runs)")
    parser.add_argument("--profile-steps", type=int, default=60, help="steps of each profiled run (default 60)")
    parser.add_argument("--cnn", action="store_true",
                        help="also train a 2-convolution CNN (tools/cnn_reference.py) on image-classifying tasks and "
                             "score mmtl at --cnn-factor times its CPU seconds")
    parser.add_argument("--cnn-factor", type=float, default=2.0, help="mmtl's CPU budget in CNN CPU times (default 2)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="how equal time is measured on both sides: wall seconds (default) or this process's CPU "
                             "seconds (time.process_time: at one thread on a CPU, the work done whatever else loads the "
                             "machine; refused with a GPU or loader workers, whose work it would miss)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mmtl-bench-recipe"),
                        help="where --real conversions and the default shapes world are kept")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.explicit_tasks = args.tasks is not None
    args.tasks = [t.strip() for t in (args.tasks or ",".join(ALL_TASKS)).split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in ALL_TASKS]
    if unknown or not args.tasks or not args.seeds or min(args.steps, args.batch_size) < 1:
        parser.error(f"need --tasks from {','.join(ALL_TASKS)} (got {unknown or 'none'}), seeds, steps and batch >= 1")
    if args.profile_steps < 1:
        parser.error("--profile-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and the JSON line."""
    args = parse_args(argv)
    try:
        datasets = [d for d in select_datasets(args) if d.tasks]
        if not datasets:
            raise MMTLError("nothing to run: no data set supervises the requested tasks")
        with tempfile.TemporaryDirectory(prefix="bench-recipe-") as workdir:
            summary = run_bench(datasets, args, Path(workdir))
    except (MMTLError, subprocess.CalledProcessError) as exc:
        print(f"mmtl: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
