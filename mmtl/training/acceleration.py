"""Speed and memory knobs applied to a built model: gradient checkpointing and ``torch.compile``.

Both act on the model's units (``MultiTaskModel.units``, through :func:`mmtl.models.layers.units_of`):
every transformer block of mmtl and the blocks of third-party encoders (timm stages, open_clip
residual blocks). Compiling block by block keeps the model's Python structure (per-task caches,
balancers that differentiate per task) outside the compiled graphs, so nothing graph-breaks, while
the fused kernels cover the compute.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtl.models.layers import Block, units_of

log = logging.getLogger(__name__)


def _recompute_in_backward(unit: nn.Module) -> None:
    """Make a third-party ``unit`` recompute its activations in the backward pass (as ``Block.checkpointing`` does)."""
    forward = unit.forward

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if unit.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    unit.forward = checkpointed


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute the activations of every unit of ``model`` in the backward pass; returns how many units."""
    units = units_of(model)
    for unit in units:
        if isinstance(unit, Block):
            unit.checkpointing = True
        else:
            _recompute_in_backward(unit)
    return len(units)


def compile_blocks(model: nn.Module, mode: str | None = None) -> int:
    """``torch.compile`` every unit of ``model`` in place; returns how many units."""
    import torch._functorch.config as functorch_config

    # per-task gradients (gradient balancers, the task monitor) differentiate the same graph several
    # times (retain_graph=True), which compiled backward graphs with donated buffers refuse
    functorch_config.donated_buffer = False
    units = units_of(model)
    for unit in units:
        unit.compile(mode=mode, dynamic=None)
    log.info("compiled %d blocks (the first steps include compilation)", len(units))
    return len(units)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated so far, in GiB (0 on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
