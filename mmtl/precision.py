"""Device and numeric precision: one ``get_autocast`` for the whole code base."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mmtl.errors import ConfigError

# pure_bf16 keeps weights in bf16 and still runs under bf16 autocast, which casts fp32 inputs and
# keeps losses and softmaxes in fp32
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "pure_bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is available; use train.device=cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on a GPU and fp32 on a CPU (CPU autocast is rarely faster)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
    return name


def get_autocast(precision: str, device: torch.device) -> ContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler that is enabled only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
