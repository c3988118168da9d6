"""Small exact solvers on the T x T Gram matrix of the task gradients.

Every balancer that needs only inner products works on ``normalized_gram``: the Gram matrix
divided by its largest diagonal entry, in float64. Its weights are then invariant to the overall
scale of the gradients (scale-equivariant directions) and no absolute epsilon compares a squared
norm with a constant. Zero rows stay zero rows, and ``safe_divide`` turns 0/0 into 0.

The quadratic programs (MGDA's min-norm point, the projections of UPGrad and DualProj) are solved
exactly for the small T of multi-task learning by enumerating active sets: every subset S of the
tasks gives a linear KKT system, solved for all subsets at once by one batched pseudo-inverse;
the optimum is the feasible candidate with the lowest objective. That is 2^T - 1 systems of size
<= T + 1 (T = 8: 255 systems of 9 x 9), all tensor operations, no Python branch on a value.
"""
from __future__ import annotations

import itertools

import torch

# above this many tasks the active-set enumeration (2^T systems) is replaced by projected gradient
MAX_ENUMERATED_TASKS = 10
# tolerance of the KKT feasibility checks, relative to the normalized Gram matrix (largest entry 1)
FEASIBILITY_TOL = 1e-9


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is non-zero, 0 where it is zero (no epsilon)."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


# columns of G per float64 block of the Gram product (bounds the temporary float64 copy)
GRAM_BLOCK = 1 << 20


def scaled_gram(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, s)`` with ``G G^T = s M`` in float64 and M's largest diagonal entry 1 (M = 0 for G = 0).

    The products are accumulated in float64 (block by block), so M is the Gram matrix of the given
    vectors to float64 precision: positive semi-definite, exactly singular for exactly parallel rows."""
    gram = torch.zeros(grads.shape[0], grads.shape[0], dtype=torch.float64, device=grads.device)
    for start in range(0, grads.shape[1], GRAM_BLOCK):
        block = grads[:, start:start + GRAM_BLOCK].double()
        gram += block @ block.T
    largest = gram.diagonal().amax()
    return safe_divide(gram, largest), largest


def cosine_matrix(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosines between the task gradients and their norms, from a Gram matrix (zero rows: cosine 0)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return safe_divide(gram, norms.unsqueeze(0) * norms.unsqueeze(1)), norms


# directions that are closer to linear dependence than this (in cosine terms, about what fp32 gradients
# can resolve) count as dependent where a method inverts the gradients' cosine matrix
DEPENDENCE_TOL = 1e-6


def normalized_gram(grads: torch.Tensor) -> torch.Tensor:
    """``G G^T`` (T, T) in float64, divided by its largest diagonal entry (a zero matrix stays zero)."""
    return scaled_gram(grads)[0]


def _subsets(n: int, device: torch.device) -> torch.Tensor:
    """All non-empty subsets of ``range(n)`` as a (2^n - 1, n) boolean mask."""
    rows = [bits for bits in itertools.product([False, True], repeat=n) if any(bits)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def _batched_kkt(gram: torch.Tensor, linear: torch.Tensor, simplex: bool) -> torch.Tensor:
    """Candidate solutions (S, T) of min 1/2 x^T M x + q^T x, x >= 0 (and sum x = 1 if ``simplex``),
    one per active set, each solving the KKT system on its support by least squares (pseudo-inverse)."""
    n = gram.shape[0]
    masks = _subsets(n, gram.device)
    mask = masks.to(gram.dtype)
    outer = mask.unsqueeze(2) * mask.unsqueeze(1)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    # off the support: x_j = 0 (identity rows); on it: (M x + q)_S = lambda 1_S
    system = outer * gram + (1 - mask).unsqueeze(2) * eye
    rhs = -mask * linear
    if simplex:
        border = mask.unsqueeze(2)  # -lambda on the support rows
        system = torch.cat([torch.cat([system, -border], 2),
                            torch.cat([mask.unsqueeze(1), torch.zeros_like(mask[:, :1]).unsqueeze(2)], 2)], 1)
        rhs = torch.cat([rhs, torch.ones_like(rhs[:, :1])], 1)
    solution = torch.linalg.pinv(system, rtol=1e-12, hermitian=not simplex) @ rhs.unsqueeze(2)
    return solution.squeeze(2)[:, :n] * mask


def solve_box_qp(gram: torch.Tensor, linear: torch.Tensor, simplex: bool) -> torch.Tensor:
    """Exact minimiser of 1/2 x^T M x + q^T x over x >= 0 (and sum x = 1 when ``simplex``) for PSD M.

    ``gram`` should be normalized (largest entry about 1). Exact active-set enumeration for up to
    ``MAX_ENUMERATED_TASKS`` variables; beyond that, projected gradient descent.
    """
    if gram.shape[0] > MAX_ENUMERATED_TASKS:
        return _projected_gradient(gram, linear, simplex)
    candidates = _batched_kkt(gram, linear, simplex)
    gradient = candidates @ gram + linear
    # KKT: x >= 0; off-support gradient >= the multiplier (0 without the simplex constraint)
    multiplier = (gradient * candidates).sum(1, keepdim=True) if simplex else torch.zeros_like(gradient[:, :1])
    feasible = (candidates >= -FEASIBILITY_TOL).all(1) & (gradient >= multiplier - 1e-7).all(1)
    if simplex:
        feasible &= (candidates.sum(1) - 1).abs() < 1e-7
    objective = 0.5 * ((candidates @ gram) * candidates).sum(1) + candidates @ linear
    objective = torch.where(feasible, objective, torch.full_like(objective, float("inf")))
    best = candidates[torch.argmin(objective)].clamp_min(0)
    return best / best.sum() if simplex else best


def project_to_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``x`` (n,) onto the probability simplex (sort-based)."""
    ordered, _ = torch.sort(x, descending=True)
    cumulative = ordered.cumsum(0) - 1
    index = torch.arange(1, len(x) + 1, device=x.device, dtype=x.dtype)
    rho = (ordered - cumulative / index > 0).sum() - 1
    return (x - cumulative[rho] / (rho + 1)).clamp_min(0)


def _projected_gradient(gram: torch.Tensor, linear: torch.Tensor, simplex: bool, iterations: int = 2000) -> torch.Tensor:
    """Projected gradient descent for many variables (step 1 / largest eigenvalue bound)."""
    n = gram.shape[0]
    step = 1.0 / gram.abs().sum(1).amax().clamp_min(1e-12)
    x = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    for _ in range(iterations):
        x = x - step * (gram @ x + linear)
        x = project_to_simplex(x) if simplex else x.clamp_min(0)
    return x


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """w on the simplex minimising ||sum_t w_t g_t||^2 given the (normalized) Gram matrix of the g_t."""
    return solve_box_qp(gram, torch.zeros_like(gram[0]), simplex=True)


def project_to_dual_cone(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weights of the projection of ``weights @ G`` onto the dual cone {x : G x >= 0} of the task gradients.

    The projection is (weights + v) @ G with v >= 0 minimising 1/2 (weights + v)^T M (weights + v)
    (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Proposition 1).
    """
    return weights + solve_box_qp(gram, gram @ weights, simplex=False)
