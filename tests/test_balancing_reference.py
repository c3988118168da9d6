"""mmtl's balancers against the reference implementations, LibMTL 1.1.5 and torchjd 0.18 (the ``dev`` extra).

Both sides get the same gradient matrices (random T = 2..5, well conditioned: norms within 10x,
so that the references' absolute epsilons and ridges do not matter) and the same loss sequences.
Where a reference differs on purpose, the method's docstring says why; the tolerance here says by
how much. Extreme scales and norm ratios are tested against exact answers in test_balancing_edges.
"""
import sys
import types

import pytest
import torch
from torch import nn

import mmtl.components  # noqa: F401
from mmtl.balancing.solvers import normalized_gram
from mmtl.config import BalancerConfig
from mmtl.registry import BALANCERS

aggregation = pytest.importorskip("torchjd.aggregation")
scalarization = pytest.importorskip("torchjd.scalarization")


def libmtl_weighting():
    """LibMTL.weighting (LibMTL 1.1.5 imports a torchvision module that torchvision has since removed)."""
    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    return pytest.importorskip("LibMTL.weighting")


def make(name: str, tasks: int, **options):
    torch.manual_seed(0)
    return BALANCERS.get(name)([f"t{i}" for i in range(tasks)], BalancerConfig(name=name, options=options))


def cases(count: int = 6):
    """(T, G) pairs: random gradients with norms within 10x, some conflicting, in float64."""
    generator = torch.Generator().manual_seed(15)
    for index in range(count):
        tasks = 2 + index % 4
        g = torch.randn(tasks, 12, generator=generator, dtype=torch.float64)
        g = g * torch.empty(tasks, 1, dtype=torch.float64).uniform_(0.3, 3.0, generator=generator)
        yield tasks, g


def ours(name: str, g: torch.Tensor, steps: int = 1, **options) -> torch.Tensor:
    balancer = make(name, g.shape[0], **options)
    for _ in range(steps):
        d = balancer.update(g, torch.ones(g.shape[0]), list(range(g.shape[0])))
    return d.double()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: float = 0.0) -> None:
    """Close relative to the expected vector's norm (or ``scale``, for an expected zero)."""
    atol = rtol * max(expected.norm().item(), scale) + 1e-12
    assert torch.allclose(actual, expected.double(), rtol=rtol, atol=atol), (actual, expected)


@pytest.mark.parametrize("name, reference, rtol", [
    ("upgrad", lambda: aggregation.UPGrad(), 3e-3),
    ("dualproj", lambda: aggregation.DualProj(), 3e-3),
    ("config", lambda: aggregation.ConFIG(), 1e-6),
    ("imtl", lambda: aggregation.IMTLG(), 1e-6),
    ("aligned_mtl", lambda: aggregation.AlignedMTL(), 1e-6),
    ("mgda", lambda: aggregation.MGDA(epsilon=1e-9, max_iters=10_000), 3e-3),  # torchjd: Frank-Wolfe
    ("cagrad", lambda: aggregation.CAGrad(c=0.4, norm_eps=0.0), 1e-4),
])
def test_aggregators_agree_with_torchjd(name: str, reference, rtol: float) -> None:
    for _, g in cases():
        expected = reference()(g)
        actual = ours(name, g, iterations=100) if name == "cagrad" else ours(name, g)
        if name == "cagrad":
            actual = actual * (1 + 0.4**2)  # torchjd leaves out LibMTL's rescale by 1 / (1 + c^2)
        if name == "aligned_mtl":
            actual = actual / g.shape[0]  # torchjd weighs the aligned gradients by 1/T, the paper by 1
        assert_close(actual, expected, rtol)


def test_pcgrad_agrees_with_torchjd_on_two_tasks() -> None:
    for tasks, g in cases():
        if tasks == 2:  # with more tasks the random projection order differs between the two
            assert_close(ours("pcgrad", g), aggregation.PCGrad()(g), 1e-6)


def test_nash_mtl_agrees_with_torchjd_in_direction() -> None:
    # torchjd follows the paper's code: alpha from cvxpy on G G^T / ||G G^T||_F, capped norm; the
    # direction of the bargaining solution is the same
    for tasks, g in cases():
        expected = aggregation.NashMTL(n_tasks=tasks, max_norm=0.0, optim_niter=50)(g.float()).double()
        actual = ours("nash_mtl", g)
        cosine = torch.nn.functional.cosine_similarity(actual, expected, dim=0)
        assert cosine > 1 - 1e-4, cosine


def test_fairgrad_agrees_with_torchjd() -> None:
    for _, g in cases():
        for alpha in (0.5, 1.0, 2.0):
            expected = aggregation.FairGrad(alpha=alpha)(g)
            assert_close(ours("fairgrad", g, alpha=alpha), expected, 1e-4)


def test_stateful_gram_weightings_agree_with_torchjd_over_steps() -> None:
    for tasks, g in cases():
        sequence = [g * (1 + 0.1 * k) for k in range(4)]
        modo, sdm = make("modo", tasks), make("sdmgrad", tasks)
        modo_ref, sdm_ref = aggregation.MoDoWeighting(gamma=0.1, rho=0.1), aggregation.SDMGradWeighting()
        for step in sequence:
            ids = list(range(tasks))
            # mmtl's MoDo steps on the normalized Gram matrix (its gamma is scale-free), torchjd's on the raw one
            assert_close(modo.weights_from_gram(step, torch.ones(tasks), ids), modo_ref(normalized_gram(step)), 1e-6)
            # 1e-4: mmtl keeps the warm-started weights in a float32 buffer between steps
            assert_close(sdm.weights_from_gram(step, torch.ones(tasks), ids), sdm_ref(step @ step.T), 5e-4)


def test_excess_mtl_agrees_with_torchjd_over_steps() -> None:
    for tasks, g in cases():
        balancer, reference = make("excess_mtl", tasks), aggregation.ExcessMTL()
        for k in range(4):
            step = g * (1 + 0.3 * k) + 0.1 * k
            assert_close(balancer.update(step, torch.ones(tasks), list(range(tasks))).double(),
                         reference(step.float()).double(), 1e-4)


def test_gradvac_agrees_with_torchjd_over_steps_on_two_tasks() -> None:
    for tasks, g in cases():
        if tasks != 2:
            continue
        balancer, reference = make("gradvac", 2, beta=0.5), aggregation.GradVac(beta=0.5, eps=0.0)
        for k in range(3):
            step = g + torch.tensor([[0.0], [-0.5 * k]], dtype=torch.float64)
            assert_close(balancer.update(step, torch.ones(2), [0, 1]).double(), reference(step), 1e-5)


@pytest.mark.parametrize("name, reference", [
    ("gls", lambda tasks: scalarization.GeometricMean()),
    ("stch", lambda tasks: scalarization.STCH(mu=1.0)),
    ("imtl_l", lambda tasks: scalarization.IMTLL(tasks)),
])
def test_loss_scalarisations_agree_with_torchjd(name: str, reference) -> None:
    generator = torch.Generator().manual_seed(0)
    for tasks in (2, 3, 5):
        losses = torch.rand(tasks, generator=generator, dtype=torch.float64) * 3 + 0.1
        balancer = make(name, tasks)
        ours_value = balancer.combine({f"t{i}": loss for i, loss in enumerate(losses)})
        assert torch.allclose(ours_value.double(), reference(tasks)(losses), rtol=1e-6)


class LinearTasks(nn.Module):
    """LibMTL's weighting interface on a gradient matrix: L_t = g_t . x, so dL_t/dx = g_t."""

    def __init__(self, weighting: type, grads: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(grads.shape[1]))
        self.grads, self.weighting = grads.float(), weighting()
        self.weighting.task_num, self.weighting.device, self.weighting.rep_grad = len(grads), torch.device("cpu"), False
        self.weighting.get_share_params = lambda: [self.x]
        self.weighting.zero_grad_share_params = lambda: self.x.grad.zero_() if self.x.grad is not None else None
        self.weighting.init_param()

    def combined(self, **options) -> torch.Tensor:
        losses = self.grads @ self.x
        self.x.grad = torch.zeros_like(self.x)
        self.weighting.backward(losses, **options)
        return self.x.grad.detach().double()


def test_gradient_methods_agree_with_libmtl() -> None:
    weighting = libmtl_weighting()
    for tasks, g in cases(8):
        mgda = LinearTasks(weighting.MGDA, g).combined(mgda_gn="none")
        assert_close(ours("mgda", g), mgda, 1e-2)  # LibMTL's Frank-Wolfe stops at a tolerance
        imtl = LinearTasks(weighting.IMTL, g).combined()
        assert_close(ours("imtl", g), imtl, 1e-4)
        if tasks == 2:
            assert_close(ours("pcgrad", g), LinearTasks(weighting.PCGrad, g).combined(), 1e-5)
        if tasks == 3:  # LibMTL's CAGrad is written for three tasks
            cagrad = LinearTasks(weighting.CAGrad, g).combined(calpha=0.4, rescale=1)
            assert_close(ours("cagrad", g, iterations=100), cagrad, 2e-3)  # SLSQP's tolerance


def test_gls_agrees_with_libmtl() -> None:
    weighting = libmtl_weighting()
    g = torch.randn(3, 5, dtype=torch.float64)
    losses = torch.tensor([0.5, 2.0, 1.5])
    model = LinearTasks(weighting.GLS, g)
    model.weighting.backward(torch.stack([losses[t] + g[t].float() @ model.x for t in range(3)]))
    balancer = make("gls", 3)
    expected = (balancer.combine({f"t{i}": v for i, v in enumerate(losses)}) * 0 + 1)  # weights: GLS / (T L_t)
    assert torch.allclose(model.x.grad.double(), (balancer.weights.double() * expected) @ g, rtol=1e-5)


def special_matrices():
    """Parallel, opposite, zero and strongly conflicting rows."""
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    h = torch.tensor([0.5, 1.0, -1.0, 0.2], dtype=torch.float64)
    return {"parallel": torch.stack([g, 2 * g, h]), "opposite": torch.stack([g, -g]),
            "zero": torch.stack([g, torch.zeros_like(g), h]), "conflicting": torch.stack([g, -0.9 * g + 0.1 * h, h])}


@pytest.mark.parametrize("case", list(special_matrices()))
@pytest.mark.parametrize("name, reference, rtol", [
    # torchjd's Frank-Wolfe stops 1% above the min norm on "conflicting"; mmtl's point satisfies the
    # optimality conditions to 1e-8 there (and its norm is the smaller one)
    ("mgda", lambda: aggregation.MGDA(epsilon=1e-12, max_iters=100_000), 2e-2),
    ("upgrad", lambda: aggregation.UPGrad(), 3e-3),
    ("dualproj", lambda: aggregation.DualProj(), 3e-3),
    ("imtl", lambda: aggregation.IMTLG(), 1e-5),
    ("config", lambda: aggregation.ConFIG(), 1e-5),
])
def test_degenerate_rows_agree_with_torchjd(case: str, name: str, reference, rtol: float) -> None:
    g = special_matrices()[case]
    expected, actual = reference()(g), ours(name, g)
    if name == "imtl" and case in ("parallel", "conflicting"):
        # linearly dependent gradients leave IMTL-G's weights under-determined: each side picks one
        # solution; both must have equal projections on every unit gradient (here: zero for "conflicting",
        # where no direction in the two-dimensional span has equal non-zero projections on all three)
        projections = (g / g.norm(dim=1, keepdim=True)) @ actual
        assert torch.allclose(projections, projections[0].expand_as(projections), rtol=1e-5,
                              atol=1e-6 * g.norm(dim=1).max().item())
        return
    if name == "mgda":
        assert actual.norm() <= expected.norm() * (1 + 1e-6)
    assert_close(actual, expected, rtol, scale=g.norm(dim=1).max().item())
