"""Gradient balancers: one shared gradient from the per-task gradients G (T, D).

The trainer (``mmtl.balancing.backward``) computes G on the shared parameters (``balancer.on:
params``: T backward passes through the trunk) or on the shared representation
(``on: representation``: T backward passes through the heads only, then one through the trunk),
every ``balancer.update_every`` steps. Costs below are per update on top of that: T = tasks,
D = size of the gradient space. Methods that need only inner products implement ``gram_weights``
on the Gram matrix normalized by ``mmtl.balancing.solvers.normalized_gram`` (float64, largest
diagonal entry 1), so their directions do not depend on the gradients' overall scale and no
absolute epsilon decides anything: O(T^2 D) for the Gram matrix, then O(T^3)-sized work.
Solvers run a fixed number of tensor iterations with no Python branch on a value; dense
decompositions (eigh, pinv) may wait for a GPU, as torch checks their status on the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmtl.balancing.base import GradientBalancer, setting
from mmtl.balancing.solvers import DEPENDENCE_TOL, cosine_matrix, min_norm_weights, safe_divide, solve_box_qp
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS

@dataclass
class IterationSettings:
    """Settings of a balancer with an iterative solver."""

    iterations: int = setting(20, 1, 10_000)  # solver iterations per update


@BALANCERS.register("pcgrad")
class PCGrad(GradientBalancer):
    """Projecting Conflicting Gradients: each g_i loses its component along every g_j it conflicts with.

    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020. For each i, over the other tasks in random order: if g_i . g_j < 0,
    g_i -= (g_i . g_j) / ||g_j||^2 g_j; the update is the sum of the projected gradients.
    Every projected g_i is tracked as coefficients on the rows of G, so only the Gram matrix is
    needed. Cost: the Gram matrix (O(T^2 D)), then O(T^3). LibMTL and torchjd compare
    ||g_j||^2 with an absolute epsilon; here a zero g_j alone is skipped (exact at any scale).
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        n = gram.shape[0]
        coefficients = torch.eye(n, dtype=gram.dtype, device=gram.device)
        for i in range(n):
            for j in self.random_order(n):
                if j == i:
                    continue
                dot = coefficients[i] @ gram[:, j]
                coefficients[i, j] -= safe_divide(dot.clamp(max=0.0), gram[j, j])
        return coefficients.sum(0)


@BALANCERS.register("mgda")
class MGDA(GradientBalancer):
    """Multiple-Gradient Descent: the min-norm point of the convex hull of the task gradients.

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (a
    Pareto-stationary direction). The paper's Frank-Wolfe solver is replaced by an exact
    active-set solution of the simplex QP (``mmtl.balancing.solvers``), accurate to float64
    rounding; LibMTL uses Frank-Wolfe and torchjd a QP solver with a small ridge, so they agree to
    about 1e-4. Cost: the Gram matrix (O(T^2 D)), then 2^T - 1 systems of size T + 1.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return min_norm_weights(gram)


@BALANCERS.register("mgda_ub")
class MGDAUpperBound(MGDA):
    """MGDA-UB: MGDA on the gradients of the shared representation Z instead of the parameters.

    Sener & Koltun 2018, Section 3.3: minimising the upper bound needs only dL_t/dZ, so the
    trunk is back-propagated once. Always uses ``on: representation``. Cost: T backward passes
    through the heads, one through the trunk, plus MGDA's solver.
    """

    space = "representation"


@dataclass
class CAGradSettings:
    """CAGrad's radius and solver iterations."""

    c: float = setting(0.4, 0.0)  # radius of the ball around the mean gradient, relative to its norm
    iterations: int = setting(20, 1, 10_000)  # alternations of the solver


@BALANCERS.register("cagrad")
class CAGrad(GradientBalancer):
    """Conflict-Averse Gradient descent: the best worst-case improvement within a ball around the mean gradient.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. Solves min_{w in simplex} w^T G g0 + c ||g0|| ||G^T w|| (g0 the mean gradient,
    c = ``balancer.c``), then d = (g0 + c ||g0|| / ||G^T w|| G^T w) / (1 + c^2) (LibMTL's
    ``rescale=1``; torchjd returns the same direction without the division). The paper uses
    scipy's SLSQP; here ||x|| = min_t (x^2 / t + t) / 2 turns the problem into ``iterations``
    alternations of an exact simplex QP and t = ||G^T w||, which converge on any scaling.
    Cost: the Gram matrix (O(T^2 D)), then ``iterations`` x (2^T - 1) systems of size T + 1.
    """

    Settings = CAGradSettings

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        c, n = self.settings.c, gram.shape[0]
        mean = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
        radius = c * (mean @ gram @ mean).clamp_min(0).sqrt()  # c ||g0||
        linear = gram @ mean
        w = mean.clone()
        for _ in range(self.settings.iterations):
            t = (w @ gram @ w).clamp_min(0).sqrt().clamp_min(1e-12)
            w = solve_box_qp(radius / t * gram, linear, simplex=True)
        lam = safe_divide(radius, (w @ gram @ w).clamp_min(0).sqrt())
        return (mean + lam * w) / (1 + c * c)


@BALANCERS.register("imtl")
class IMTLG(GradientBalancer):
    """IMTL-G: weights whose combined gradient has equal projections on every task's unit gradient.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021 (the gradient part): with u_t = g_t / ||g_t||, the weights a (sum 1) solve
    (u_r - u_t) . G^T a = 0 for every task t against a reference task r. Tasks with a zero
    gradient get weight 0 and the others are balanced among themselves (LibMTL's closed form
    divides by their zero norm and returns nothing). The full IMTL (IMTL-L's loss scaling plus
    IMTL-G) is ``imtl_full``.
    Cost: the Gram matrix (O(T^2 D)), one T x T pseudo-inverse.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return imtl_g_weights(gram)


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights (sum 1) from a (normalized) Gram matrix; zero-gradient tasks weigh 0.

    Solved for b = a * ||g|| (weights on the unit gradients), whose equations involve only cosines,
    so that the rank decisions of the pseudo-inverse do not depend on the tasks' norms. With linearly
    dependent gradients the weights are not unique; the minimum-norm b is returned."""
    cosines, norms = cosine_matrix(gram)
    live = norms > 0
    reference = torch.argmax(norms)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    # u_r . d = u_t . d for every live t (d = sum_s b_s u_s), b_t = 0 for dead t, and sum b = 1
    rows = torch.where(live.unsqueeze(1), cosines[reference] - cosines, eye)
    is_reference = torch.arange(gram.shape[0], device=gram.device) == reference
    rows = torch.where(is_reference.unsqueeze(1), live.to(gram.dtype).expand_as(rows), rows)
    rhs = is_reference.to(gram.dtype) * live.any()
    weights = safe_divide(torch.linalg.pinv(rows, rtol=DEPENDENCE_TOL) @ rhs, norms)
    return safe_divide(weights, weights.sum())


@dataclass
class GradNormSettings:
    """GradNorm's step size and asymmetry."""

    lr: float = setting(0.025, 0.0)  # step size of the weight update
    alpha: float = setting(1.5, 0.0)  # asymmetry: restoring force toward equal training rates


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

    Settings = GradNormSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("learned", torch.ones(len(tasks)))
        self.register_buffer("initial_loss", torch.zeros(len(tasks)))

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        w = self.learned[ids].to(gram.dtype)
        with torch.no_grad():
            norms = gram.diagonal().clamp_min(0).sqrt()
            norms = safe_divide(norms, norms.mean())
            losses = losses.to(gram.dtype)
            start = self.initial_loss[ids].to(gram.dtype)
            start = torch.where(start > 0, start, losses)
            self.initial_loss[ids] = start.to(self.initial_loss.dtype)
            rate = safe_divide(losses, start)
            target = (w * norms).mean() * safe_divide(rate, rate.mean()) ** self.settings.alpha
            step = torch.sign(w * norms - target) * norms
            updated = (w - self.settings.lr * step).clamp_min(1e-3)
            self.learned[ids] = (updated * len(ids) / updated.sum()).to(self.learned.dtype)
        return w


@dataclass
class GradVacSettings:
    """GradVac's EMA rate."""

    beta: float = setting(0.01, 0.0, 1.0)  # EMA rate of the target cosine similarities


@BALANCERS.register("gradvac")
class GradVac(GradientBalancer):
    """Gradient Vaccine: moves each pair of task gradients toward an EMA target cosine, not just to >= 0.

    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021. For each i and j (random order),
    if cos(g_i, g_j) < target_ij: g_i += ||g_i|| (t sqrt(1-c^2) - c sqrt(1-t^2)) /
    (||g_j|| sqrt(1-t^2)) g_j; target_ij <- (1-beta) target_ij + beta cos (``balancer.beta``).
    Applied to the whole gradient vector (the paper also applies it per layer), tracked as
    coefficients on the rows of G. Zero gradients are skipped instead of divided by an epsilon.
    Cost: the Gram matrix (O(T^2 D)), then O(T^3); a T x T buffer.
    """

    Settings = GradVacSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("target", torch.zeros(len(tasks), len(tasks)))

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        beta, n = self.settings.beta, len(ids)
        coefficients = torch.eye(n, dtype=gram.dtype, device=gram.device)
        norms = gram.diagonal().clamp_min(0).sqrt()
        for i in range(n):
            for j in self.random_order(n):
                if j == i:
                    continue
                gi_norm = (coefficients[i] @ gram @ coefficients[i]).clamp_min(0).sqrt()
                cos = safe_divide(coefficients[i] @ gram[:, j], gi_norm * norms[j])
                t = self.target[ids[i], ids[j]].to(gram.dtype)
                root_t = (1 - t * t).clamp_min(0).sqrt()
                lift = safe_divide(gi_norm * (t * (1 - cos * cos).clamp_min(0).sqrt() - cos * root_t), norms[j] * root_t)
                coefficients[i, j] += torch.where(cos < t, lift, torch.zeros_like(lift))
                self.target[ids[i], ids[j]] = ((1 - beta) * t + beta * cos).to(self.target.dtype)
        return coefficients.sum(0)


@BALANCERS.register("aligned_mtl")
class AlignedMTL(GradientBalancer):
    """Aligned-MTL: makes the task gradients' system well conditioned by aligning its principal components.

    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023. With G G^T = V L V^T (eigenvalues above T x float64 eps x the largest
    kept, as torch.linalg.matrix_rank does), B = sqrt(l_min) V L^-1/2 V^T and alpha = B 1;
    d = alpha^T G. Cost: the Gram matrix (O(T^2 D)) and one T x T eigendecomposition.
    """

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(gram)
        keep = values > values.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
        inv_sqrt = torch.where(keep, values.clamp_min(torch.finfo(gram.dtype).tiny).rsqrt(), torch.zeros_like(values))
        smallest = torch.where(keep, values, torch.full_like(values, float("inf"))).min()
        smallest = torch.where(torch.isfinite(smallest), smallest, torch.zeros_like(smallest)).clamp_min(0).sqrt()
        return (smallest * (vectors * inv_sqrt) @ vectors.T).sum(0)


@dataclass
class DBMTLSettings:
    """DB-MTL's momentum schedule."""

    momentum: float = setting(0.9, 0.0, 1.0)  # beta_k = momentum / k^decay
    decay: float = setting(0.5, 0.0)


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

    Settings = DBMTLSettings
    inner_products_only = False

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__(tasks, config)
        self.register_buffer("average", torch.zeros(0))
        self.register_buffer("count", torch.zeros(()))

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        log_grads = grads * safe_divide(torch.ones_like(losses), losses).unsqueeze(1)
        shape = (len(self.tasks), grads.shape[1])
        if tuple(self.average.shape) != shape:
            self.average = torch.zeros(shape, device=grads.device)
            self.count.zero_()
        self.count += 1
        momentum = self.settings.momentum / self.count ** self.settings.decay
        average = self.average[ids]
        average = log_grads + momentum * (average - log_grads)
        self.average[ids] = average
        norms = average.norm(dim=1)
        return safe_divide(norms.max(), norms) @ average


@BALANCERS.register("nash_mtl")
class NashMTL(GradientBalancer):
    """Nash-MTL: the bargaining solution, alpha > 0 with (G G^T) alpha = 1 / alpha, d = alpha^T G.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game", ICML 2022. The paper solves a sequence of convex programs with cvxpy;
    here the same equation is solved as the minimiser of the strictly convex
    1/2 a^T M a - sum log a_t (M the normalized Gram matrix) by ``balancer.iterations`` damped
    Newton steps from the solution for orthogonal gradients, without a ridge; the paper's alpha is
    that solution divided by the square root of the normalization. Tasks with a zero gradient get
    weight 0. The paper (and torchjd) also caps alpha and normalizes by ||G G^T||_F; here the
    exact bargaining solution is returned (for opposite gradients, where none exists, the
    iterations stop a divergence). Cost: the Gram matrix (O(T^2 D)), then O(iterations * T^3).
    """

    Settings = IterationSettings

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        return nash_weights(gram, self.settings.iterations)

    def rescale(self, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return safe_divide(weights, scale.sqrt())  # alpha of G G^T = alpha of (G G^T / s) / sqrt(s)


def nash_weights(gram: torch.Tensor, iterations: int) -> torch.Tensor:
    """alpha > 0 solving gram alpha = 1 / alpha (zero rows: weight 0) by damped Newton steps."""
    return power_weights(gram, 1.0, iterations)


def power_weights(gram: torch.Tensor, power: float, iterations: int) -> torch.Tensor:
    """w > 0 solving gram w = w^-power (zero rows: weight 0): the minimiser of the strictly convex
    1/2 w^T M w - sum_t F(w_t) with F' = w^-power, by damped Newton steps from the orthogonal case."""
    live = gram.diagonal() > 0
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    m = torch.where(live.unsqueeze(0) & live.unsqueeze(1), gram, eye)  # dead tasks decouple
    w = m.diagonal() ** (-1.0 / (1.0 + power))
    for _ in range(iterations):
        residual = m @ w - w ** -power
        delta = torch.linalg.solve_ex(m + torch.diag(power * w ** (-power - 1)), residual)[0]
        # largest step <= 1 that keeps w positive (fraction-to-boundary rule)
        limit = torch.where(delta > 0, 0.9 * safe_divide(w, delta), torch.full_like(w, float("inf")))
        w = w - limit.min().clamp(max=1.0) * delta
    return torch.where(live, w, torch.zeros_like(w))
