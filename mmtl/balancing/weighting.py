"""Loss-weighting balancers (one backward pass per step)."""
from __future__ import annotations

import torch
from torch import nn

from mmtl.balancing.base import Balancer
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS


@BALANCERS.register("fixed")
class FixedWeights(Balancer):
    """Weighted sum with constant weights from ``balancer.weights`` (missing tasks weigh 1).

    Cost: none beyond the sum.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.weights = {task: float(config.weights.get(task, 1.0)) for task in tasks}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[task] * loss for task, loss in losses.items())

    def task_weights(self) -> dict[str, float]:
        return dict(self.weights)


@BALANCERS.register("equal")
class EqualWeights(FixedWeights):
    """Plain sum of task losses: the baseline every other balancer is compared with."""

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, BalancerConfig(name=config.name))


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting: sum_t exp(-s_t) * L_t + s_t, with learned s_t = log sigma_t^2.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018. Cost: one parameter per task, no extra backward pass.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.log_variance = nn.Parameter(torch.zeros(len(tasks)))
        self.index = {task: i for i, task in enumerate(tasks)}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for task, loss in losses.items():
            s = self.log_variance[self.index[task]]
            total = total + torch.exp(-s) * loss + s
        return total

    def task_weights(self) -> dict[str, float]:
        weights = torch.exp(-self.log_variance.detach()).tolist()
        return {task: weights[i] for task, i in self.index.items()}
