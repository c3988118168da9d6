"""Exponential moving average of model weights (evaluated and saved in place of the raw weights)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` for every floating-point tensor.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not
    dominated by the random initialisation. Its state travels in checkpoints through ``state_dict``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.shadow = nn.ParameterDict()
        self._names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        for name in self._names:
            self.shadow[name.replace(".", "__")] = nn.Parameter(model.state_dict()[name].detach().clone(), requires_grad=False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model``'s current weights (no host sync)."""
        self.updates += 1
        n = self.updates.to(torch.float32)
        decay = torch.clamp((1 + n) / (10 + n), max=self.decay)
        state = model.state_dict()
        for name in self._names:
            shadow = self.shadow[name.replace(".", "__")]
            shadow.lerp_(state[name].to(shadow.dtype), 1 - decay.to(shadow.dtype))

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (for evaluation or saving)."""
        state = model.state_dict()
        backup = {name: state[name].detach().clone() for name in self._names}
        with torch.no_grad():
            for name in self._names:
                state[name].copy_(self.shadow[name.replace(".", "__")])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name in self._names:
                    state[name].copy_(backup[name])
