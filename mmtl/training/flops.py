"""Peak FLOP/s of a device and model FLOPs utilisation (MFU); counting FLOPs is mmtl.flop_count."""
from __future__ import annotations

import os
import re

import torch
from torch import nn

from mmtl.flop_count import count_flops

# Dense peak FLOP/s per device, by the dtype the matmuls run in. GPUs: vendor datasheets (dense,
# no sparsity). CPUs are estimated per core from the widest SIMD unit the machine reports.
GPU_PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30e12},
}
# fp32 FLOPs per cycle per core: 2 FMA pipes x (vector lanes) x 2
CPU_FLOPS_PER_CYCLE = {"avx512f": 64, "avx2": 32, "sse": 8}


def _cpu_peak_fp32() -> float:
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            text = info.read()
        flags = re.search(r"^flags\s*:(.*)$", text, re.M).group(1)
        mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M))
    except (OSError, AttributeError, ValueError):
        pass
    per_cycle = next((v for k, v in CPU_FLOPS_PER_CYCLE.items() if k in flags.split()), 8)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores * per_cycle * (mhz or 2000.0) * 1e6


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """Peak FLOP/s of ``device`` at ``precision`` and where the figure comes from."""
    dtype = "fp32" if precision == "fp32" else precision.replace("pure_", "")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in name:
                return peaks.get(dtype, peaks["fp32"]), f"{name} datasheet ({dtype})"
        return float("nan"), f"{name}: not in the peak table"
    return _cpu_peak_fp32(), "CPU estimate: cores x SIMD FLOPs/cycle x clock (fp32)"


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """Achieved FLOP/s over peak FLOP/s."""
    return flops_per_step / seconds_per_step / peak if seconds_per_step > 0 and peak > 0 else float("nan")


def step_flops(model: nn.Module, batch: object, device: torch.device) -> float:
    """Model FLOPs of one forward + backward of ``model`` on ``batch`` (in eval mode, with a forked RNG, so
    that neither BatchNorm statistics nor the random streams of the run change; gradients are cleared)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.eval()
        flops = count_flops(lambda: sum(model(batch).values()).backward())
        model.zero_grad(set_to_none=True)
    return float(flops)
