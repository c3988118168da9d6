"""Speed and memory knobs applied to a built model: gradient checkpointing and ``torch.compile``.

Both act on the same units: every transformer block of mmtl (``mmtl.models.layers.Block``) and
the timm image backbone (which has its own checkpointing switch). Compiling block by block keeps
the model's Python structure (per-task caches, balancers that differentiate per task) outside
the compiled graphs, so nothing graph-breaks, while the fused kernels cover the compute.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from mmtl.models.layers import Block

log = logging.getLogger(__name__)


def _backbones(model: nn.Module) -> list[nn.Module]:
    """timm models inside ``model`` (found by timm's checkpointing switch)."""
    return [m for m in model.modules() if hasattr(m, "set_grad_checkpointing") and hasattr(m, "forward_features")]


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute activations of every block and timm backbone in the backward pass; returns how many units."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.checkpointing = True
    backbones = _backbones(model)
    for backbone in backbones:
        backbone.set_grad_checkpointing(True)
    return len(blocks) + len(backbones)


def compile_blocks(model: nn.Module, mode: str | None = None) -> int:
    """``torch.compile`` every block and timm backbone of ``model`` in place; returns how many units."""
    import torch._functorch.config as functorch_config

    # per-task gradients (gradient balancers, the task monitor) differentiate the same graph several
    # times (retain_graph=True), which compiled backward graphs with donated buffers refuse
    functorch_config.donated_buffer = False
    units = [m for m in model.modules() if isinstance(m, Block)] + _backbones(model)
    for unit in units:
        unit.compile(mode=mode, dynamic=None)
    log.info("compiled %d blocks/backbones (the first steps include compilation)", len(units))
    return len(units)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated so far, in GiB (0 on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
