"""Gradient balancers that remove conflicts by projection or by fair weighting, on the Gram matrix alone.

Like ``mmtl.balancing.gradient``, each works on the normalized Gram matrix M of the per-task
gradients (``mmtl.balancing.solvers``) and returns task weights; costs are on top of the
per-task gradients: the Gram matrix (O(T^2 D)) plus what each docstring says.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmtl.balancing.base import GradientBalancer, setting
from mmtl.balancing.gradient import imtl_g_weights, power_weights
from mmtl.balancing.solvers import DEPENDENCE_TOL, cosine_matrix, project_to_dual_cone, safe_divide
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS


@BALANCERS.register("upgrad")
class UPGrad(GradientBalancer):
    """UPGrad: the mean of every task gradient projected onto the dual cone of all of them.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232).
    The update never conflicts with a task (G d >= 0) and is proportional to the mean gradient
    when no two tasks conflict. Each projection is solved exactly (active sets); torchjd adds a
    ridge of 1e-4 x the trace to the Gram matrix, so the two agree to about 1e-3 on well
    conditioned inputs and differ where tasks' norms differ by orders of magnitude.
    Cost: T exact non-negative QPs of size T (2^T - 1 small systems each).
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.stack([project_to_dual_cone(gram, row) for row in eye]).mean(0)


@BALANCERS.register("dualproj")
class DualProj(GradientBalancer):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients.

    Quinton & Rey 2024 (arXiv:2406.16232), the projection used by UPGrad applied once, to the
    mean (as in Lopez-Paz & Ranzato's GEM). Cost: one exact non-negative QP of size T.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        mean = torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype, device=gram.device)
        return project_to_dual_cone(gram, mean)


@BALANCERS.register("config")
class ConFIG(GradientBalancer):
    """ConFIG: the direction with equal cosine to every task gradient, as long as the gradients' projections on it.

    Liu, Chen, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks", ICLR 2025. x = pinv(U) 1 with U the unit task gradients; d = (sum_t g_t . x^) x^.
    Computed from the Gram matrix (x = U^T (U U^T)^+ 1); a zero task gradient is left out, and
    gradients closer to linear dependence than fp32 resolves (``DEPENDENCE_TOL``) count as dependent.
    Cost: one T x T pseudo-inverse.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        cosines, norms = cosine_matrix(gram)
        unit_weights = torch.linalg.pinv(cosines, rtol=DEPENDENCE_TOL, hermitian=True) @ torch.ones_like(norms)
        weights = safe_divide(unit_weights, norms)  # x = G^T weights
        return safe_divide(weights * (gram @ weights).sum(), weights @ gram @ weights)


@dataclass
class FairGradSettings:
    """FairGrad's fairness exponent and solver iterations."""

    alpha: float = setting(1.0, 1e-3, 1e3)  # alpha-fairness: 1 is proportional fairness (Nash-MTL)
    iterations: int = setting(30, 1, 10_000)


@BALANCERS.register("fairgrad")
class FairGrad(GradientBalancer):
    """FairGrad: alpha-fair weights, w > 0 with (G G^T) w = w^(-1/alpha).

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024. Solved as the
    minimiser of a strictly convex function by damped Newton steps (Nash-MTL is alpha = 1); the
    paper (and torchjd) use scipy's least_squares from uniform weights. Tasks with a zero
    gradient get weight 0. Cost: O(iterations * T^3).
    """

    Settings = FairGradSettings

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return power_weights(gram, 1.0 / self.settings.alpha, self.settings.iterations)

    def rescale(self, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        alpha = self.settings.alpha
        return weights * safe_divide(torch.ones_like(scale), scale) ** (alpha / (1 + alpha))


@dataclass
class IMTLSettings:
    """IMTL-L's step size."""

    lr: float = setting(0.025, 0.0)  # gradient step on the loss scales s_t per update


@BALANCERS.register("imtl_full")
class IMTL(GradientBalancer):
    """IMTL: IMTL-L's learned loss scales e^s_t, then IMTL-G on the scaled gradients.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (the hybrid of Section 3.3).
    The scales follow the gradient of IMTL-L's loss e^s L - s, d/ds = e^s L - 1, by one step of
    ``balancer.lr`` per update (the paper trains s with the network's optimiser; a step of its own
    keeps the per-task gradient path free of a second backward). Cost: IMTL-G's, O(T) more.
    """

    Settings = IMTLSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("log_scale", torch.zeros(len(tasks)))

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        scales = self.log_scale[ids].to(gram.dtype).exp()
        weights = imtl_g_weights(scales.unsqueeze(1) * gram * scales.unsqueeze(0)) * scales
        with torch.no_grad():
            step = scales * losses.to(gram.dtype) - 1
            self.log_scale[ids] -= (self.settings.lr * step).to(self.log_scale.dtype)
        return weights



