"""Gradient balancers with randomness or running state across steps: RGW, SDMGrad, MoDo, MoCo, ExcessMTL, GradDrop.

Costs are on top of the per-task gradients (T tasks, D gradient entries). Random numbers come
from the balancer's own checkpointed generator, so every rank of a data-parallel run draws the
same; running state lives in buffers, so it travels in checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmtl.balancing.base import GradientBalancer, setting
from mmtl.balancing.solvers import project_to_simplex, safe_divide
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS


@BALANCERS.register("rgw")
class RandomGradientWeighting(GradientBalancer):
    """Random Gradient Weighting: the task gradients weighted by w = softmax(z), z ~ N(0, I), every update.

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022 (RGW; torchjd's ``Random``). Cost: T random numbers.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        draw = torch.randn(len(ids), generator=self.generator, dtype=torch.float64)
        return torch.softmax(draw, dim=0).to(gram.device)


@dataclass
class SDMGradSettings:
    """SDMGrad's inner solver and its pull toward the mean."""

    lr: float = setting(10.0, 0.0)
    momentum: float = setting(0.5, 0.0, 0.999)
    iterations: int = setting(20, 1, 10_000)
    lambda_: float = setting(0.3, 0.0)  # weight of the preference (uniform) direction


@BALANCERS.register("sdmgrad")
class SDMGrad(GradientBalancer):
    """SDMGrad: simplex weights from warm-started projected momentum steps on w^T M (w + lambda w~).

    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
    Algorithms", NeurIPS 2023; d = G^T (w + lambda w~) / (1 + lambda) with w~ uniform. The paper
    forms the inner products from independent batches (unbiased); here they come from one batch.
    M is scaled by the squared mean gradient norm as in torchjd (without its absolute 1e-8).
    Cost: ``iterations`` x O(T^2).
    """

    Settings = SDMGradSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("simplex_weights", torch.full((len(tasks),), 1.0 / len(tasks)))

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        s = self.settings
        w = self.simplex_weights[ids].to(gram.dtype)
        w = w / w.sum()
        preference = torch.full_like(w, 1.0 / len(ids))
        scaled = safe_divide(gram, gram.diagonal().clamp_min(0).sqrt().mean() ** 2)
        velocity = torch.zeros_like(w)
        for index in range(s.iterations):
            grad = scaled @ (w + s.lambda_ * preference)
            velocity = grad if index == 0 else s.momentum * velocity + grad
            w = project_to_simplex(w - s.lr * velocity)
        self.simplex_weights[ids] = w.to(self.simplex_weights.dtype)
        return (w + s.lambda_ * preference) / (1 + s.lambda_)


@dataclass
class MoDoSettings:
    """MoDo's step size and regularisation."""

    gamma: float = setting(0.1, 0.0)
    rho: float = setting(0.1, 0.0)


@BALANCERS.register("modo")
class MoDo(GradientBalancer):
    """MoDo: one projected step per update on the simplex weights, lambda <- P(lambda - gamma (M + rho I) lambda).

    Chen, Fang, Wang & Zhou, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance", NeurIPS 2023. The paper uses two independent batches
    for M; here one. M is the normalized Gram matrix, so ``gamma`` is relative to the largest
    squared task-gradient norm (torchjd steps on the raw Gram matrix, whose scale is the
    gradients'). Cost: O(T^2).
    """

    Settings = MoDoSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("simplex_weights", torch.full((len(tasks),), 1.0 / len(tasks)))

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        w = self.simplex_weights[ids].to(gram.dtype)
        w = project_to_simplex(w / w.sum() - self.settings.gamma * (gram @ w + self.settings.rho * w))
        self.simplex_weights[ids] = w.to(self.simplex_weights.dtype)
        return w


class VectorStateBalancer(GradientBalancer):
    """A balancer that keeps (T, D) running state of the gradient vectors themselves.

    Under data parallelism it needs ``on: params`` (each rank holds other samples' representation
    gradients); with ``on: representation`` the state restarts when the representation's shape changes.
    """

    inner_products_only = False
    state_names: tuple[str, ...] = ()

    def _state(self, grads: torch.Tensor) -> None:
        shape = (len(self.tasks), grads.shape[1])
        for name in self.state_names:
            if tuple(getattr(self, name).shape) != shape:
                setattr(self, name, torch.zeros(shape, device=grads.device))

    def every_task(self, ids: list[int]) -> bool:
        """Whether ``ids`` are all the tasks in their own order: then the state's rows are updated in
        place, without the copies that gathering and scattering a subset of (T, D) rows costs."""
        return ids == list(range(len(self.tasks)))


@dataclass
class MoCoSettings:
    """MoCo's tracking rate, step size and regularisation."""

    beta: float = setting(0.5, 0.0, 1.0)  # rate at which the tracked gradients follow the new ones
    gamma: float = setting(0.1, 0.0)  # step size of the simplex weights
    rho: float = setting(0.0, 0.0)


@BALANCERS.register("moco")
class MoCo(VectorStateBalancer):
    """MoCo: MGDA-style weights on tracked (bias-corrected) task gradients, updated by one projected step.

    Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach", ICLR 2023: y_t <- y_t - beta (y_t - g_t),
    lambda <- P(lambda - gamma (Y Y^T + rho I) lambda), d = Y^T lambda. Y Y^T is divided by its
    largest diagonal entry, so ``gamma`` is scale-free. Cost: O(T D) and a (T, D) buffer.
    """

    Settings = MoCoSettings
    state_names = ("tracked",)

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("simplex_weights", torch.full((len(tasks),), 1.0 / len(tasks)))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        self._state(grads)
        if self.every_task(ids):  # y - beta (y - g), in place
            tracked = self.tracked.sub_((self.tracked - grads).mul_(self.settings.beta))
        else:
            tracked = self.tracked[ids] - self.settings.beta * (self.tracked[ids] - grads)
            self.tracked[ids] = tracked
        tracked64 = tracked.double()
        gram = tracked64 @ tracked64.T
        gram = safe_divide(gram, gram.diagonal().amax())
        w = self.simplex_weights[ids].double()
        w = project_to_simplex(w / w.sum() - self.settings.gamma * (gram @ w + self.settings.rho * w))
        self.simplex_weights[ids] = w.to(self.simplex_weights.dtype)
        return w.to(tracked.dtype) @ tracked


@dataclass
class ExcessMTLSettings:
    """ExcessMTL's step size."""

    robust_step_size: float = setting(1.0, 0.0)


@BALANCERS.register("excess_mtl")
class ExcessMTL(VectorStateBalancer):
    """ExcessMTL: weights that grow with each task's estimated excess risk (AdaGrad-preconditioned gradient norm).

    He, Zhou, Chen, Ji & Lai, "Robust Multi-Task Learning with Excess Risks", ICML 2024:
    h = sqrt(sum of squared past gradients), e_t = sum g_t^2 / h, divided by its first value
    (scale processing, from the second update on, as in the authors' code), weights <-
    softmax(log weights + step e). torchjd adds 1e-7 inside the root and to the first value; here
    0/0 is 0. No warm-up steps. Cost: O(T D), a (T, D) buffer.
    """

    Settings = ExcessMTLSettings
    state_names = ("squared_sum",)

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("squared_sum", torch.zeros(0))
        self.register_buffer("initial_excess", torch.zeros(len(tasks)))
        self.register_buffer("simplex_weights", torch.full((len(tasks),), 1.0 / len(tasks)))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        self._state(grads)
        squares = grads * grads
        if self.every_task(ids):
            total = self.squared_sum.add_(squares)
        else:
            total = self.squared_sum[ids] + squares
            self.squared_sum[ids] = total
        # squares / sqrt(total), 0 where total is 0 (squares is 0 there too). The zeros are replaced
        # by ones before the root: on the CPU, sqrt(0) takes a slow path (about 10x the time per entry,
        # and representation gradients are mostly zeros)
        excess = squares.div_(torch.where(total != 0, total, 1.0).sqrt_()).sum(1)
        first = self.initial_excess[ids]
        known = first > 0
        self.initial_excess[ids] = torch.where(known, first, excess)
        # as in the authors' code (and torchjd), the first update uses the unscaled excess
        excess = torch.where(known, safe_divide(excess, first), excess)
        w = self.simplex_weights[ids]
        w = torch.softmax(torch.log(w / w.sum()) + self.settings.robust_step_size * excess, dim=0)
        self.simplex_weights[ids] = w
        return w @ grads


@BALANCERS.register("graddrop")
class GradDrop(VectorStateBalancer):
    """GradDrop: each gradient entry keeps only the tasks of one sign, chosen at random by the sign purity.

    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
    Multitask Models with Gradient Sign Dropout", NeurIPS 2020: P = (1 + sum g / sum |g|) / 2,
    U ~ uniform, positive entries survive where P > U, negative ones where P < U. The paper
    applies it to activation gradients (``on: representation``); here to either space, with
    the whole batch's gradient (no leak). Its result is not a combination of the task gradients,
    so with ``update_every > 1`` the steps between updates use the least-squares weights that come
    closest to it. Cost: O(T D), D random numbers.
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        purity = 0.5 * (1 + safe_divide(grads.sum(0), grads.abs().sum(0)))
        draw = torch.rand(grads.shape[1], generator=self.generator).to(grads.device, non_blocking=True)
        keep = ((purity > draw) & (grads > 0)) | ((purity < draw) & (grads < 0))
        return (grads * keep).sum(0)
