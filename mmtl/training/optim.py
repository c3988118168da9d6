"""Optimiser and learning-rate schedule."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from mmtl.config import TrainConfig


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases, embeddings and positional tables are not weight-decayed."""
    return param.ndim < 2 or "embed" in name or "position" in name or "norm" in name


def build_optimizer(modules: Iterable[nn.Module], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules`` (one fused kernel, on CUDA and on the CPU).

    A module with ``lr_scale_of(name)`` (MultiTaskModel, set up by fine-tuning) puts parameters whose
    factor is not 1 into extra groups at ``lr * factor``, after the two usual groups; the parameters
    of every further module (the balancer's) come in groups of their own.
    """
    # each module's parameters get groups of their own: under FSDP the model's are DTensors and a
    # balancer's are not, and the fused kernel refuses a list that mixes them; keying by module (not by
    # type) keeps the layout of a sharded run's optimiser equal to a single process's, so that either
    # resumes the other's checkpoint
    groups: dict[tuple[int, bool, float], list[nn.Parameter]] = {(0, False, 1.0): [], (0, True, 1.0): []}
    for index, module in enumerate(modules):
        scale_of = getattr(module, "lr_scale_of", None)
        for name, param in module.named_parameters():
            if param.requires_grad:
                scale = scale_of(name) if scale_of is not None else 1.0
                groups.setdefault((index, _no_decay(name, param), scale), []).append(param)
    param_groups = [{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
                     "lr": config.lr * scale} for (_, no_decay, scale), params in groups.items()]
    # fused on the CPU too: the default per-tensor loop took ~50 ms per tiny-preset step there, fused ~14 ms
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(0.9, 0.98), fused=device.type in ("cuda", "cpu"))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then the chosen decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = min(progress, 1.0)
    if config.schedule == "cosine":
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Step-wise schedule following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
