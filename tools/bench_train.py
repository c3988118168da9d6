"""Benchmark: training step time, samples/s, data-wait fraction, FLOPs and MFU of a preset.

Usage: python tools/bench_train.py [--steps 20] [--warmup 5] [--in-memory] [KEY=VALUE ...]
       e.g. model.preset=small train.precision=bf16 data.batch_size=64 train.compile=true

``--in-memory`` feeds pre-loaded batches from the device (the compute ceiling, no data wait);
without it the real streaming loader feeds the step (data.num_workers sets its processes).

Measured in the same run:
  mmtl     the real Trainer.train_step fed by the real streaming loader (balancer, clipping,
           schedule, scaler included), with data time measured apart from compute time;
  baseline a bare PyTorch loop on the same architecture: one fixed pre-loaded batch, summed
           losses, backward, AdamW step (no loader, no balancer, no clipping, no schedule).
ratio = mmtl step time / baseline step time (1.0 = the loop adds nothing).
FLOPs per step are counted with mmtl.flop_count over forward + backward; MFU uses the
device's peak from mmtl.training.flops. Final line: one JSON object.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_pipelines.shapes_world import write_shards
from mmtl.builder import components_from_data
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import load_config
from mmtl.training.acceleration import compile_blocks, peak_memory_gb
from mmtl.flop_count import count_flops
from mmtl.training.flops import mfu, peak_flops
from mmtl.training.loop import Trainer
from mmtl.precision import get_autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainer(trainer: Trainer, warmup: int, steps: int, in_memory: list | None = None) -> dict[str, float]:
    """Seconds per step and data-wait fraction of the real training step with its loader (or cycling
    through ``in_memory`` batches already on the device)."""
    batches = itertools.cycle(in_memory) if in_memory else iter(trainer._loader())
    data_seconds, started = 0.0, 0.0
    for index in range(warmup + steps):
        if index == warmup:
            _sync(trainer.device)
            started, data_seconds = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        batch = next(batches).to(trainer.device)
        data_seconds += time.perf_counter() - fetch
        trainer.train_step(batch)
    _sync(trainer.device)
    total = time.perf_counter() - started
    return {"step_s": total / steps, "data_wait_fraction": data_seconds / total}


def time_bare_loop(config, batch, device: torch.device, precision: str, warmup: int, steps: int) -> tuple[float, int]:
    """Seconds per step of a bare loop on a fixed batch, and FLOPs of one such step (compiled like
    the Trainer's model when train.compile is set)."""
    model = components_from_data(config).model.to(device)
    if precision == "pure_bf16":
        model.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step() -> None:
        with get_autocast(precision, device):
            loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops = count_flops(lambda: sum(model(batch).values()).backward())
    if config.train.compile:
        compile_blocks(model)
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps, flops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1024, help="synthetic training samples to write")
    parser.add_argument("--in-memory", type=int, default=0, metavar="N",
                        help="cycle through N batches pre-loaded on the device instead of streaming")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mmtl-bench-train-"))
    config = load_config(None, [f"data.path={workdir / 'data'}", f"output_dir={workdir / 'run'}",
                                "train.progress=false", *args.overrides])
    write_shards(config.data.path, {"train": args.samples}, image_size=config.model.image.image_size)
    trainer = Trainer(config)
    loader = iter(trainer._loader())
    batch = next(loader).to(trainer.device)
    in_memory = [batch] + [next(loader).to(trainer.device) for _ in range(args.in_memory - 1)] if args.in_memory else None
    if config.train.compile:
        compile_blocks(trainer.model)
    ours = time_trainer(trainer, args.warmup, args.steps, in_memory)
    bare_step_s, flops = time_bare_loop(config, batch, trainer.device, trainer.precision, args.warmup, args.steps)
    peak, peak_source = peak_flops(trainer.device, trainer.precision)
    size = config.data.batch_size
    result = {
        "bench": "train", "preset": config.model.preset, "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "precision": trainer.precision, "compile": config.train.compile, "in_memory": bool(in_memory),
        "batch_size": size, "num_workers": config.data.num_workers, "tasks": config.tasks,
        "step_s": round(ours["step_s"], 4), "samples_per_s": round(size / ours["step_s"], 1),
        "data_wait_fraction": round(ours["data_wait_fraction"], 3),
        "baseline_step_s": round(bare_step_s, 4), "ratio": round(ours["step_s"] / bare_step_s, 3),
        "gflops_per_step": round(flops / 1e9, 2), "achieved_gflops_per_s": round(flops / ours["step_s"] / 1e9, 1),
        "mfu": round(mfu(flops, ours["step_s"], peak), 4), "peak_gflops_per_s": round(peak / 1e9, 1),
        "peak_source": peak_source, "gpu_memory_gb": round(peak_memory_gb(trainer.device), 2),
    }
    print(f"{'':<10}{'step s':>10}{'samples/s':>12}{'data wait':>13}")
    print(f"{'mmtl':<10}{ours['step_s']:>10.4f}{size / ours['step_s']:>12.1f}{ours['data_wait_fraction']:>13.1%}")
    print(f"{'baseline':<10}{bare_step_s:>10.4f}{size / bare_step_s:>12.1f}{'  (no loader)':>13}")
    print(f"FLOPs/step {flops / 1e9:.2f} G -> {flops / ours['step_s'] / 1e9:.1f} GFLOP/s; "
          f"MFU {result['mfu']:.1%} of {peak / 1e9:.0f} GFLOP/s ({peak_source})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
