"""Optimiser and learning-rate schedule."""
from __future__ import annotations

import math
from typing import Callable, Iterable

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


def clip_groups(model: nn.Module, scope: str) -> list[list[nn.Parameter]]:
    """The parameter groups whose gradient norms are clipped apart (``train.grad_clip_scope``).

    ``global``: one group of every parameter. ``owner``: the shared parameters (everything no single
    task's head owns) and then each task's head (``model.heads``), so the update of a task's own
    parameters never shrinks because another task's gradient is large.
    """
    params = list(model.parameters())  # frozen ones have no gradient, which clipping skips
    heads = getattr(model, "heads", None)
    if scope == "global" or not heads:
        return [params]
    owned = [list(head.parameters()) for head in heads.values()]
    own = {id(p) for group in owned for p in group}
    return [[p for p in params if id(p) not in own], *[group for group in owned if group]]


def clip_gradients(groups: list[list[nn.Parameter]], max_norm: float,
                   full: Callable[[torch.Tensor], torch.Tensor] = lambda norm: norm) -> torch.Tensor:
    """Clip each group's gradient norm to ``max_norm``; the norm over all groups before clipping.

    ``full`` turns a group's (possibly sharded) norm into a plain tensor (FSDP).
    """
    norms = [full(torch.nn.utils.clip_grad_norm_(group, max_norm)) for group in groups if group]
    return norms[0] if len(norms) == 1 else torch.stack([n.float() for n in norms]).square().sum().sqrt()
