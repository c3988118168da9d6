"""Exponential moving average of the weights, kept beside the trained model.

Built on ``torch.optim.swa_utils.AveragedModel`` (buffers such as BatchNorm statistics are
averaged too). Checkpoints store the average as ``ema.safetensors``; evaluation and inference
load it in place of ``model.safetensors`` when it is there.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    """``update()`` after every optimiser step; ``module`` is the averaged copy of the model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class and parameter names as the trained one)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.averaged.update_parameters(model)

    @property
    def updates(self) -> int:
        """How many times the average was updated (saved in the training state for resume)."""
        return int(self.averaged.n_averaged)

    @updates.setter
    def updates(self, value: int) -> None:
        self.averaged.n_averaged.fill_(value)
