"""Gradient balancers: one shared gradient from the per-task gradients G (T, D).

The trainer (``mmtl.balancing.backward``) computes G on the shared parameters (``balancer.on:
params``: T backward passes through the trunk) or on the shared representation
(``on: representation``: T backward passes through the heads only, then one through the trunk),
every ``balancer.update_every`` steps. Costs below are per update on top of that: T = tasks,
D = size of the gradient space. Every solver runs a fixed number of tensor iterations with no
Python branch on a value; only the eigendecomposition (Aligned-MTL) and pseudo-inverse (IMTL-G)
may wait for a GPU, as torch's dense decompositions check their status on the host.
"""
from __future__ import annotations

import torch

from mmtl.balancing.base import GradientBalancer
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS

EPS = 1e-8


def min_norm_weights(gram: torch.Tensor, iterations: int) -> torch.Tensor:
    """Frank-Wolfe on the simplex: w minimising ||sum_t w_t g_t||^2 given the Gram matrix of the g_t.

    The line search between the iterate and the best vertex is exact, so two tasks are solved
    in one iteration (Sener & Koltun 2018, Algorithm 2).
    """
    n = gram.shape[0]
    w = torch.full((n,), 1.0 / n, device=gram.device, dtype=gram.dtype)
    for _ in range(iterations):
        vertex = torch.nn.functional.one_hot(torch.argmin(gram @ w), n).to(gram.dtype)
        v1, v2, v3 = w @ gram @ w, w @ gram @ vertex, vertex @ gram @ vertex
        gamma = ((v1 - v2) / (v1 + v3 - 2 * v2).clamp_min(EPS)).clamp(0.0, 1.0)
        w = (1 - gamma) * w + gamma * vertex
    return w


@BALANCERS.register("pcgrad")
class PCGrad(GradientBalancer):
    """Projecting Conflicting Gradients: each g_i loses its component along every g_j it conflicts with.

    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020. For each i, over the other tasks in random order: if g_i . g_j < 0,
    g_i -= (g_i . g_j) / ||g_j||^2 g_j; the update is the sum of the projected gradients.
    Cost: O(T^2 D) extra flops, one (T, D) copy.
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        projected = grads.clone()
        sq_norms = (grads * grads).sum(1).clamp_min(EPS)
        n = grads.shape[0]
        for i in range(n):
            for j in self.random_order(n):
                if j == i:
                    continue
                dot = projected[i] @ grads[j]
                projected[i] = projected[i] - dot.clamp(max=0.0) / sq_norms[j] * grads[j]
        return projected.sum(0)


@BALANCERS.register("mgda")
class MGDA(GradientBalancer):
    """Multiple-Gradient Descent: the min-norm point of the convex hull of the task gradients.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (a
    Pareto-stationary direction; Frank-Wolfe solver with ``balancer.iterations`` steps).
    Cost: the T x T Gram matrix (O(T^2 D)), then O(iterations * T^2).
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return min_norm_weights(grads @ grads.T, self.config.iterations) @ grads


@BALANCERS.register("mgda_ub")
class MGDAUpperBound(MGDA):
    """MGDA-UB: MGDA on the gradients of the shared representation Z instead of the parameters.

    Sener & Koltun 2018, Section 3.3: minimising the upper bound needs only dL_t/dZ, so the
    trunk is back-propagated once. Always uses ``on: representation``. Cost: T backward passes
    through the heads, one through the trunk, plus MGDA's solver on (T, |Z|).
    """

    space = "representation"


@BALANCERS.register("cagrad")
class CAGrad(GradientBalancer):
    """Conflict-Averse Gradient descent: the best worst-case improvement within a ball around the mean gradient.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. Solves min_{w in simplex} w^T G g0 + c ||g0|| ||G^T w|| (g0 the mean gradient,
    c = ``balancer.c``) by ``balancer.iterations`` steps of exponentiated gradient (the paper
    uses scipy's SLSQP), then d = (g0 + c ||g0|| / ||G^T w|| G^T w) / (1 + c^2).
    Cost: the T x T Gram matrix (O(T^2 D)), then O(iterations * T^2).
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        c = self.config.c
        gram = grads @ grads.T
        gram = gram / gram.diagonal().mean().clamp_min(EPS)  # scale-free: the argmin does not change
        g0_norm = gram.mean().clamp_min(0).sqrt()
        b = gram.mean(1)  # G g0
        w = torch.full_like(b, 1.0 / len(b))
        for _ in range(self.config.iterations):
            gw_norm = (w @ gram @ w).clamp_min(EPS).sqrt()
            step = b + c * g0_norm * (gram @ w) / gw_norm
            w = w * torch.exp(-step / step.abs().max().clamp_min(EPS))
            w = w / w.sum()
        gw = w @ grads
        lam = c * grads.mean(0).norm() / gw.norm().clamp_min(EPS)
        return (grads.mean(0) + lam * gw) / (1 + c * c)


@BALANCERS.register("imtl")
class IMTLG(GradientBalancer):
    """IMTL-G: weights whose combined gradient has equal projections on every task's unit gradient.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021 (the gradient part, IMTL-G): with D = g_1 - g_{2..T} and U = u_1 - u_{2..T}
    (u_t = g_t / ||g_t||), alpha_{2..T} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum alpha_{2..T}.
    Cost: O(T^2 D) for the products, a (T-1) x (T-1) solve.
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        if grads.shape[0] == 1:
            return grads[0]
        units = grads / grads.norm(dim=1, keepdim=True).clamp_min(EPS)
        diff, udiff = grads[:1] - grads[1:], units[:1] - units[1:]
        rest = (grads[0] @ udiff.T) @ torch.linalg.pinv(diff @ udiff.T)
        alpha = torch.cat([1 - rest.sum(0, keepdim=True), rest])
        return alpha @ grads


@BALANCERS.register("gradnorm")
class GradNorm(GradientBalancer):
    """GradNorm: learned weights that equalise w_t ||g_t||, scaled by each task's relative training rate.

    Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", ICML 2018. Target norm_t = mean(w ||g||) * r_t^alpha
    with r_t = (L_t / L_t(0)) / mean; the weights take one step of ``balancer.lr`` on
    sum_t |w_t ||g_t|| - target_t| (norms divided by their mean, so the step does not depend on
    the gradient scale) and are renormalised to sum to T. The paper uses the last shared
    layer; here G is on ``balancer.on``. Cost: O(T D) for the norms.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("learned", torch.ones(len(tasks)))
        self.register_buffer("initial_loss", torch.zeros(len(tasks)))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        w = self.learned[ids]
        combined = w @ grads
        with torch.no_grad():
            norms = grads.norm(dim=1)
            norms = norms / norms.mean().clamp_min(EPS)
            start = self.initial_loss[ids]
            start = torch.where(start > 0, start, losses)
            self.initial_loss[ids] = start
            rate = losses / start.clamp_min(EPS)
            target = (w * norms).mean() * (rate / rate.mean().clamp_min(EPS)) ** self.config.alpha
            step = torch.sign(w * norms - target) * norms
            w = (w - self.config.lr * step).clamp_min(1e-3)
            self.learned[ids] = w * len(ids) / w.sum()
        return combined


@BALANCERS.register("gradvac")
class GradVac(GradientBalancer):
    """Gradient Vaccine: moves each pair of task gradients toward an EMA target cosine, not just to >= 0.

    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021. For each i and j (random order),
    if cos(g_i, g_j) < target_ij: g_i += ||g_i|| (t sqrt(1-c^2) - c sqrt(1-t^2)) /
    (||g_j|| sqrt(1-t^2)) g_j; target_ij <- (1-beta) target_ij + beta cos (``balancer.beta``).
    Applied to the whole gradient vector (the paper also applies it per layer).
    Cost: O(T^2 D), a T x T buffer.
    """

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("target", torch.zeros(len(tasks), len(tasks)))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        beta, adjusted = self.config.beta, grads.clone()
        norms = grads.norm(dim=1)
        for i in range(len(ids)):
            for j in self.random_order(len(ids)):
                if j == i:
                    continue
                gi_norm = adjusted[i].norm()
                cos = adjusted[i] @ grads[j] / (gi_norm * norms[j]).clamp_min(EPS)
                t = self.target[ids[i], ids[j]]
                root_t = (1 - t * t).clamp_min(0).sqrt()
                scale = gi_norm * (t * (1 - cos * cos).clamp_min(0).sqrt() - cos * root_t) / (norms[j] * root_t).clamp_min(EPS)
                adjusted[i] = adjusted[i] + torch.where(cos < t, scale, torch.zeros_like(scale)) * grads[j]
                self.target[ids[i], ids[j]] = (1 - beta) * t + beta * cos.detach()
        return adjusted.sum(0)


@BALANCERS.register("aligned_mtl")
class AlignedMTL(GradientBalancer):
    """Aligned-MTL: makes the task gradients' system well conditioned by aligning its principal components.

    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023. With G G^T = V L V^T (ranks above a tolerance kept),
    B = sqrt(l_min) V L^-1/2 V^T and alpha = B 1; d = alpha^T G.
    Cost: the T x T Gram matrix (O(T^2 D)) and one T x T eigendecomposition.
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        gram = grads @ grads.T
        values, vectors = torch.linalg.eigh(gram)
        tol = values.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
        keep = values > tol
        inv_sqrt = torch.where(keep, values.clamp_min(EPS).rsqrt(), torch.zeros_like(values))
        smallest = torch.where(keep, values, torch.full_like(values, float("inf"))).min().clamp_min(0).sqrt()
        smallest = torch.where(torch.isfinite(smallest), smallest, torch.zeros_like(smallest))
        basis = smallest * (vectors * inv_sqrt) @ vectors.T
        return basis.sum(0) @ grads


@BALANCERS.register("db_mtl")
class DBMTL(GradientBalancer):
    """Dual-Balancing MTL: log losses balance loss scales, then every task gradient is scaled to the largest norm.

    Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning", 2023 (arXiv:2308.12029).
    Per-task gradients of log L_t (= g_t / L_t) are averaged with momentum
    beta_k = 0.9 / k^0.5 (the paper's defaults), and d = sum_t (max_s ||h_s|| / ||h_t||) h_t.
    With ``on: representation`` the average restarts whenever the representation's shape changes,
    and data-parallel training needs ``on: params`` (the average is of the gradient vectors themselves).
    Cost: O(T D), a (T, D) running-average buffer (saved in checkpoints).
    """

    inner_products_only = False

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("average", torch.zeros(0))
        self.register_buffer("count", torch.zeros(()))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        log_grads = grads / losses.clamp_min(EPS).unsqueeze(1)
        shape = (len(self.tasks), grads.shape[1])
        if tuple(self.average.shape) != shape:
            self.average = torch.zeros(shape, device=grads.device)
            self.count.zero_()
        self.count += 1
        momentum = 0.9 / self.count.sqrt()
        average = self.average[ids]
        average = log_grads + momentum * (average - log_grads)
        self.average[ids] = average
        norms = average.norm(dim=1)
        return (norms.max() / norms.clamp_min(EPS)) @ average


@BALANCERS.register("nash_mtl")
class NashMTL(GradientBalancer):
    """Nash-MTL: the bargaining solution, alpha > 0 with (G G^T) alpha = 1 / alpha, d = alpha^T G.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game", ICML 2022. The paper solves a sequence of convex programs with cvxpy;
    here the same equation is solved as the minimiser of the strictly convex
    1/2 a^T M a - sum log a_t by ``balancer.iterations`` damped Newton steps (a simple solver,
    accurate to ~1e-6 after a dozen steps). As in the paper, M is G G^T divided by its
    Frobenius norm. Cost: the T x T Gram matrix (O(T^2 D)), then O(iterations * T^3).
    """

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return nash_weights(grads @ grads.T, self.config.iterations) @ grads


def nash_weights(gram: torch.Tensor, iterations: int) -> torch.Tensor:
    """alpha > 0 solving (gram / ||gram||_F) alpha = 1 / alpha by damped Newton steps."""
    m = gram / torch.linalg.matrix_norm(gram).clamp_min(EPS)
    m = m + 1e-6 * torch.eye(m.shape[0], device=m.device, dtype=m.dtype)
    alpha = torch.ones(m.shape[0], device=m.device, dtype=m.dtype)
    for _ in range(iterations):
        residual = m @ alpha - 1 / alpha
        hessian = m + torch.diag(1 / alpha**2)
        delta = torch.linalg.solve_ex(hessian, residual)[0]
        # largest step <= 1 that keeps alpha positive (fraction-to-boundary rule)
        limit = torch.where(delta > 0, 0.9 * alpha / delta.clamp_min(EPS), torch.full_like(alpha, float("inf")))
        alpha = alpha - limit.min().clamp(max=1.0) * delta
    return alpha
