"""Loss-weighting balancers (one backward pass per step).

Every balancer here keeps its state in parameters or buffers and updates it with tensor
operations only (``torch.where`` instead of Python branches on values), so ``combine`` never
waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mmtl.balancing.base import Balancer, setting
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS


@dataclass
class FixedSettings:
    """The constant task weights of ``fixed``."""

    # task registry key -> weight (``balancer.weights.captioning=2``); a task not named weighs 1, a
    # named task that the run does not train is ignored
    weights: dict[str, float] = field(default_factory=dict)


@BALANCERS.register("fixed")
class FixedWeights(Balancer):
    """Weighted sum with constant weights from ``balancer.weights`` (missing tasks weigh 1).

    Cost: none beyond the sum.
    """

    Settings = FixedSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        weights = self.settings.weights
        self.weights.copy_(torch.tensor([float(weights.get(task, 1.0)) for task in tasks]))


@BALANCERS.register("equal")
class EqualWeights(Balancer):
    """Plain sum of task losses: the baseline every other balancer is compared with. Cost: none."""


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting: sum_t exp(-s_t) * L_t + s_t, with learned s_t = log sigma_t^2.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018. Cost: one parameter per task, no extra backward pass.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.log_variance = nn.Parameter(torch.zeros(len(tasks)))

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        s = self.log_variance[ids]
        return (torch.exp(-s) * values + s).sum()

    def task_weights(self) -> dict[str, float]:
        weights = torch.exp(-self.log_variance.detach()).tolist()
        return {task: weights[i] for task, i in self.index.items()}


@dataclass
class DWASettings:
    """DWA's temperature and averaging window."""

    temperature: float = setting(2.0, 1e-6)  # softmax temperature of the loss ratios
    window: int = setting(20, 1)  # steps averaged into one loss estimate (the paper's epoch)


@BALANCERS.register("imtl_l")
class IMTLL(Balancer):
    """IMTL-L: learned loss scales, sum_t e^s_t L_t - s_t (the scaled losses are driven to equal value 1).

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021 (the loss part; torchjd's ``IMTLL``). The scales s_t are parameters trained by the
    run's optimiser. Cost: one parameter per task, no extra backward.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.log_scale = nn.Parameter(torch.zeros(len(tasks)))

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        s = self.log_scale[ids]
        return (torch.exp(s) * values - s).sum()

    def task_weights(self) -> dict[str, float]:
        weights = torch.exp(self.log_scale.detach()).tolist()
        return {task: weights[i] for task, i in self.index.items()}


@dataclass
class STCHSettings:
    """STCH's smoothing."""

    mu: float = setting(1.0, 1e-6)  # smoothing: mu -> 0 is the Tchebycheff max, large mu the mean


@BALANCERS.register("stch")
class SmoothTchebycheff(Balancer):
    """Smooth Tchebycheff scalarisation: mu log sum_t exp(L_t / (T mu)) (a smooth maximum of the weighted losses).

    Lin, Zhang, Lin, Ye, Zhang & Liu, "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024, with uniform preferences 1/T and no ideal point (torchjd's ``STCH``
    without ``reference``). The gradient weighs task t by softmax(L / (T mu))_t / T, the weight
    logged. Cost: none beyond a log-sum-exp, no extra backward.
    """

    Settings = STCHSettings

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        scaled = values / len(ids)
        mu = self.settings.mu
        self.weights[ids] = (torch.softmax(scaled.detach() / mu, dim=0) / len(ids)).to(self.weights.dtype)
        return mu * torch.logsumexp(scaled / mu, dim=0)


@BALANCERS.register("dwa")
class DynamicWeightAverage(Balancer):
    """Dynamic Weight Average: w_t = T * softmax(r / temperature)_t with r_t = L_t(k-1) / L_t(k-2).

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. The paper's
    L(k) is the mean loss of epoch k; with streamed data an "epoch" here is a window of
    ``balancer.window`` steps. Cost: a few element-wise ops on T numbers, no extra backward.
    """

    Settings = DWASettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        n = len(tasks)
        for name in ("window_sum", "window_count", "last", "before_last"):
            self.register_buffer(name, torch.zeros(n))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        ratio = torch.where(self.before_last > 0, self.last / self.before_last.clamp_min(1e-12), torch.ones_like(self.last))
        weights = len(self.tasks) * torch.softmax(ratio / self.settings.temperature, dim=0)
        self.weights.copy_(weights)
        with torch.no_grad():
            self.window_sum[ids] += values.detach()
            self.window_count[ids] += 1
            self.steps += 1
            closes = (self.steps % max(1, self.settings.window) == 0) & (self.window_count > 0)
            mean = self.window_sum / self.window_count.clamp_min(1)
            self.before_last.copy_(torch.where(closes, self.last, self.before_last))
            self.last.copy_(torch.where(closes, mean, self.last))
            self.window_sum.mul_(~closes)
            self.window_count.mul_(~closes)
        return (weights[ids] * values).sum()


@BALANCERS.register("rlw")
class RandomLossWeighting(Balancer):
    """Random Loss Weighting: each step w = softmax(z), z ~ N(0, I).

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022. Draws from the balancer's own generator, which checkpoints
    save and restore. Cost: T random numbers per step, no extra backward.
    """

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        draw = torch.randn(len(self.tasks), generator=self.generator)
        weights = torch.softmax(draw.to(values.device, non_blocking=True), dim=0)
        self.weights.copy_(weights)
        return (weights[ids] * values).sum()


@BALANCERS.register("gls")
class GeometricLossStrategy(Balancer):
    """Geometric Loss Strategy: the geometric mean (prod_t L_t)^(1/T) of the present tasks' losses.

    Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
    Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019. Its gradient weighs
    task t by GLS / (T * L_t), the weight logged. Cost: none beyond the sum, no extra backward.
    """

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        logs = torch.log(values.clamp_min(1e-12))
        total = torch.exp(logs.mean())
        self.weights[ids] = (total / (len(ids) * values.clamp_min(1e-12))).detach()
        return total


@dataclass
class FAMOSettings:
    """FAMO's step size and logit decay."""

    lr: float = setting(0.025, 0.0)  # Adam step size of the task logits
    gamma: float = setting(0.001, 0.0)  # weight decay of the task logits


@BALANCERS.register("famo")
class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization: balances the rate at which each task's log-loss falls.

    Liu, Liu, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023. Task
    logits xi give z = softmax(xi); the back-propagated loss is sum_t z_t log L_t / c with
    c = sum_t z_t / L_t (so the gradient weighs task t by z_t / (c L_t)). The logits follow the
    paper's update, d xi = J_softmax^T (log L_t(prev) - log L_t(now)), with Adam (``balancer.lr``,
    weight decay ``balancer.gamma``); the first step, which has no previous loss, takes no Adam
    step (so Adam's bias correction starts with the first real update, as in the paper). Unlike
    the paper, "now" is the loss of the next batch rather than a second forward pass on the same
    batch, so no extra forward is paid; this makes the update noisier. Cost: O(T) element-wise
    ops per step, no extra backward.
    """

    Settings = FAMOSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        n = len(tasks)
        for name in ("logits", "previous", "adam_m", "adam_v"):
            self.register_buffer(name, torch.zeros(n))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("adam_t", torch.zeros(()))

    @torch.no_grad()
    def _update_logits(self, ids: list[int], log_losses: torch.Tensor) -> None:
        delta = torch.zeros_like(self.logits)
        known = self.seen[ids]
        delta[ids] = torch.where(known, self.previous[ids] - log_losses, torch.zeros_like(log_losses))
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.settings.gamma * self.logits
        steps = known.any()  # no previous loss yet: nothing to learn from, Adam does not count a step
        t = self.adam_t + steps.to(self.adam_t.dtype)
        m = torch.where(steps, 0.9 * self.adam_m + 0.1 * grad, self.adam_m)
        v = torch.where(steps, 0.999 * self.adam_v + 0.001 * grad * grad, self.adam_v)
        m_hat = m / (1 - 0.9 ** t.clamp_min(1))
        v_hat = v / (1 - 0.999 ** t.clamp_min(1))
        self.logits.sub_(torch.where(steps, self.settings.lr * m_hat / (v_hat.sqrt() + 1e-8), torch.zeros_like(m)))
        self.adam_t.copy_(t)
        self.adam_m.copy_(m)
        self.adam_v.copy_(v)
        self.previous[ids] = log_losses
        self.seen[ids] = True

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, values = self.present(losses)
        values = values.clamp_min(1e-8)
        self._update_logits(ids, values.detach().log())
        z = torch.softmax(self.logits, dim=0)[ids]
        c = (z / values.detach()).sum()
        self.weights[ids] = (z / (c * values.detach())).detach()
        return (z * values.log()).sum() / c
