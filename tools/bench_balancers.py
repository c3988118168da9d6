"""Benchmark: training step time of every balancer relative to equal weighting, measured in the same run.

Usage: python tools/bench_balancers.py [--preset tiny] [--steps 5] [--warmup 2] [--rounds 3]
           [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16] [KEY=VALUE ...]
       e.g. --preset small --device cuda --precision bf16 --batch-size 64
On CUDA the timer synchronises the device before and after each timed block.

Every balancer trains the same model (one shared instance, three tasks) on one fixed synthetic batch
written to a temp dir, through the real ``Trainer.train_step`` (non-log steps: no gradient
monitor). Gradient balancers run on the shared representation (the issue's target, <= 1.5x)
and on all shared parameters. Rounds interleave the balancers so that drifting machine load
hits all of them alike; each balancer's time is its median over rounds.
ratio = median step time / equal weighting's median step time. ``flop ratio`` = the model FLOPs of
one step (``torch.utils.flop_counter``: matmuls and convolutions, forward and backward) / equal
weighting's: the ceiling that no implementation of the same per-task gradients goes below (on all
shared parameters, T backward passes through the trunk). Final line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mmtl.components  # noqa: F401
from data_pipelines.shapes_world import write_shards
from mmtl.config import resolve_config
from mmtl.registry import BALANCERS
from mmtl.flop_count import count_flops
from mmtl.training.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per balancer and round")
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
        chosen = [v for v in chosen if v[0] in wanted]
    else:
        chosen = [v for v in chosen if not v[0].endswith("-batched")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_shards(data, {"train": args.batch_size}, seed=0, difficulty="medium", image_size=64, shard_size=1000)
        base = [f"data.path={data}", f"model.preset={args.preset}", f"data.batch_size={args.batch_size}",
                "train.progress=false", "train.steps=1000000", "train.log_every=1000000",
                f"train.device={args.device}", f"train.precision={args.precision}", *args.overrides]
        trainers, batch, shared, flops = {}, None, None, {}
        for label, extra in chosen:
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
        device = next(iter(trainers.values())).device
        times: dict[str, list[float]] = {label: [] for label in trainers}
        for _ in range(args.rounds):
            for label, trainer in trainers.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(batch, monitor=False)
                _sync(device)
                times[label].append((time.perf_counter() - start) / args.steps)
    median = {label: statistics.median(t) for label, t in times.items()}
    equal = median["equal"]
    print(f"{'balancer':<22}{'ms/step':>10}{'ratio':>8}{'flop ratio':>12}")
    for label, seconds in median.items():
        print(f"{label:<22}{1000 * seconds:>10.1f}{seconds / equal:>8.2f}{flops[label] / flops['equal']:>12.2f}")
    result = {
        "preset": args.preset, "device": str(device), "precision": next(iter(trainers.values())).precision,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size, "tasks": 3,
        "equal_ms_per_step": round(1000 * equal, 2),
        "ratio": {label: round(seconds / equal, 3) for label, seconds in median.items()},
        "equal_gflop_per_step": round(flops["equal"] / 1e9, 2),
        "flop_ratio": {label: round(flops[label] / flops["equal"], 3) for label in median},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
