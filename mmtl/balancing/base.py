"""The balancer interface."""
from __future__ import annotations

import torch
from torch import nn

from mmtl.config import BalancerConfig


class Balancer(nn.Module):
    """Combines per-task losses into the scalar that is back-propagated.

    A balancer is an nn.Module so that learned weights are trained with the model and its
    state travels in checkpoints through ``state_dict``.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.config = config

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """One scalar from the losses of the tasks present in this batch."""
        raise NotImplementedError

    def task_weights(self) -> dict[str, float]:
        """Current effective weight of each task (for logging; may sync with the device)."""
        raise NotImplementedError
