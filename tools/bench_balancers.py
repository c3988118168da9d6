"""Benchmark: training step time of every balancer relative to equal weighting, measured in the same run.

Usage: python tools/bench_balancers.py [--preset tiny] [--steps 5] [--warmup 2] [--rounds 3]
           [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16] [KEY=VALUE ...]
       e.g. --preset small --device cuda --precision bf16 --batch-size 64
On CUDA the timer synchronises the device before and after each timed step.

Every balancer trains the same model (one shared instance, three tasks) on one fixed synthetic batch
written to a temp dir, through the real ``Trainer.train_step`` (non-log steps: no gradient
monitor). Gradient balancers run on the shared representation and on all shared parameters.

Paired design: after warm-up, each balancer's timed steps alternate with equal weighting's on the
same batch, B M B M ... M B, and each method step M gives one ratio, its time over the mean of the
two equal-weighting steps around it (equal weighting is also paired with itself: an A/A control
whose interval shows the run's noise). Load from other processes that changes more slowly than a
step or two hits both alike and cancels. Rounds visit the balancers in a rotated order. ``ratio`` =
the median of a balancer's ``steps x rounds`` pair ratios, with a distribution-free interval for
that median (order statistics; 95% where there are at least 6 pairs, else the full range and the
coverage it has). ``flop ratio`` = the model FLOPs of one step (torch's FLOP formulas: matmuls and
convolutions, forward and backward) / equal weighting's: the ceiling that no implementation of the
same per-task gradients goes below (on all shared parameters, T backward passes through the
trunk). Final line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import mmtl.components  # noqa: F401
from data_pipelines.shapes_world import write_shards
from mmtl.config import resolve_config
from mmtl.registry import BALANCERS
from mmtl.flop_count import count_flops
from mmtl.training.loop import Trainer


def variants() -> list[tuple[str, list[str]]]:
    """(label, overrides) of every balancer; gradient balancers also as ``name@params`` and, with one
    vmapped backward for the per-task gradients, ``name@params-batched``."""
    out = []
    for name in BALANCERS.keys():
        if BALANCERS.get(name).kind == "gradient":
            out.append((name, [f"balancer.name={name}", "balancer.on=representation"]))
            if getattr(BALANCERS.get(name), "space", None) is None:
                out.append((f"{name}@params", [f"balancer.name={name}", "balancer.on=params"]))
                out.append((f"{name}@params-batched", [f"balancer.name={name}", "balancer.on=params",
                                                        "balancer.batched_backward=true"]))
        else:
            out.append((name, [f"balancer.name={name}"]))
    return out


def paired_ratios(baseline_step: Callable[[], object], method_step: Callable[[], object], pairs: int,
                  clock: Callable[[], float] = time.perf_counter,
                  sync: Callable[[], None] = lambda: None) -> tuple[list[float], list[float]]:
    """Runs B (M B) x ``pairs``; returns each M's time over the mean of its two neighbouring B times,
    and the ``pairs + 1`` B times (seconds). ``sync`` waits for the device before each clock read."""
    def timed(step: Callable[[], object]) -> float:
        sync()
        start = clock()
        step()
        sync()
        return clock() - start

    baseline = [timed(baseline_step)]
    ratios = []
    for _ in range(pairs):
        method = timed(method_step)
        baseline.append(timed(baseline_step))
        ratios.append(method / ((baseline[-2] + baseline[-1]) / 2))
    return ratios, baseline


def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the sample median and the narrowest order-statistic interval
    [x_(k), x_(n+1-k)] that covers the true median with probability ``coverage`` >= ``confidence``
    for any continuous distribution (1 - 2 P(Binomial(n, 1/2) < k)); the full range if none does."""
    ordered, n = sorted(samples), len(samples)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = max((k for k in range(1, (n + 1) // 2 + 1) if coverage(k) >= confidence), default=1)
    return statistics.median(ordered), ordered[k - 1], ordered[n - k], coverage(k)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (pairs with equal weighting) per "
                        "balancer and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated labels to run (equal is always included; the "
                        "-batched variants run only when named here)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="train.precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps, --rounds and --batch-size must be >= 1, --warmup >= 0")
    chosen = variants()
    if args.only:
        wanted = {"equal", *args.only.split(",")}
        unknown = wanted - {label for label, _ in chosen}
        if unknown:
            parser.error(f"--only: unknown labels {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(label for label, _ in chosen)}")
        args.chosen = [v for v in chosen if v[0] in wanted]
    else:
        args.chosen = [v for v in chosen if not v[0].endswith("-batched")]
    return args


def _trainers(args: argparse.Namespace, tmp: str) -> tuple[dict[str, Trainer], object, dict[str, float]]:
    """One warmed-up trainer per chosen label, the fixed batch, and each label's FLOPs per step."""
    data = Path(tmp) / "data"
    write_shards(data, {"train": args.batch_size}, seed=0, difficulty="medium", image_size=64, shard_size=1000)
    base = [f"data.path={data}", f"model.preset={args.preset}", f"data.batch_size={args.batch_size}",
            "train.progress=false", "train.steps=1000000", "train.log_every=1000000",
            f"train.device={args.device}", f"train.precision={args.precision}", *args.overrides]
    trainers, batch, shared, flops = {}, None, None, {}
    for label, extra in args.chosen:
        # one model for all: each trainer brings only its balancer, optimiser state and scheduler,
        # so that the small preset's 26 trainers fit in memory; the weights a balancer starts a
        # timing block from do not change what a step costs
        trainer = Trainer(resolve_config({}, base + [f"output_dir={tmp}/run-{label}"] + extra), components=shared)
        shared = trainer.components
        if batch is None:
            batch = next(iter(trainer._loader())).to(trainer.device)
        for _ in range(args.warmup):
            trainer.train_step(batch, monitor=False)
        flops[label] = count_flops(lambda: trainer.train_step(batch, monitor=False))
        trainers[label] = trainer
    return trainers, batch, flops


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainers, batch, flops = _trainers(args, tmp)
        device = trainers["equal"].device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        equal = trainers["equal"]
        # equal weighting is also paired with itself: an A/A control that shows this run's noise floor
        labels = list(trainers)
        ratios: dict[str, list[float]] = {label: [] for label in labels}
        equal_seconds: list[float] = []
        for round_index in range(args.rounds):
            shift = round_index * len(labels) // args.rounds  # each round starts elsewhere in the list
            for label in labels[shift:] + labels[:shift]:
                pair, baseline = paired_ratios(lambda: equal.train_step(batch, monitor=False),
                                               lambda: trainers[label].train_step(batch, monitor=False),
                                               args.steps, sync=sync)
                ratios[label] += pair
                equal_seconds += baseline
    equal_ms = 1000 * statistics.median(equal_seconds)
    summary = {label: median_interval(r) for label, r in ratios.items()}
    coverage = min(s[3] for s in summary.values())
    print(f"{'balancer':<22}{'ms/step':>10}{'ratio':>8}  {f'{100 * coverage:.1f}% interval':<18}{'flop ratio':>10}")
    for label, (ratio, low, high, _) in summary.items():
        print(f"{label:<22}{equal_ms * ratio:>10.1f}{ratio:>8.3f}  [{low:.3f}, {high:.3f}]  "
              f"{flops[label] / flops['equal']:>10.2f}")
    result = {
        "preset": args.preset, "device": str(device), "precision": equal.precision,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size, "tasks": 3, "design": "paired", "pairs": args.steps * args.rounds,
        "interval_coverage": round(coverage, 4),
        "equal_ms_per_step": round(equal_ms, 2),
        "ratio": {label: round(s[0], 3) for label, s in summary.items()},
        "ratio_interval": {label: [round(s[1], 3), round(s[2], 3)] for label, s in summary.items()},
        "equal_gflop_per_step": round(flops["equal"] / 1e9, 2),
        "flop_ratio": {label: round(flops[label] / flops["equal"], 3) for label in summary},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
