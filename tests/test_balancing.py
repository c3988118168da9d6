"""Balancers on small problems with known answers, the per-task gradient mechanism, and checkpoint round trips."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mmtl.components  # noqa: F401
from mmtl.balancing.backward import BalancedBackward, gram_factor, sanitize
from mmtl.balancing.base import GradientBalancer
from mmtl.balancing.gradient import nash_weights
from mmtl.balancing.solvers import min_norm_weights, normalized_gram
from mmtl.config import BalancerConfig, resolve_config
from mmtl.errors import ConfigError
from mmtl.registry import BALANCERS
from mmtl.checkpoint import load_train_state
from mmtl.training.loop import Trainer
from mmtl.training.run import train
from tests.conftest import micro_overrides

TWO = ["a", "b"]


def make(name: str, tasks=TWO, on: str = "params", **options):
    return BALANCERS.get(name)(tasks, BalancerConfig(name=name, on=on, options=options))


def quadratic_grads(x: torch.Tensor, centres: list[torch.Tensor]) -> torch.Tensor:
    """Gradients at x of the quadratic tasks L_t = 1/2 ||x - c_t||^2 (computed by autograd)."""
    x = x.clone().requires_grad_()
    return torch.stack([torch.autograd.grad(0.5 * ((x - c) ** 2).sum(), x)[0] for c in centres])


# ---------------------------------------------------------------- gradient balancers, known answers

def test_pcgrad_removes_the_conflicting_component() -> None:
    grads = quadratic_grads(torch.zeros(2), [torch.tensor([-1.0, 0.0]), torch.tensor([1.0, -1.0])])
    assert torch.allclose(grads, torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    d = make("pcgrad").combine_gradients(grads, torch.ones(2), [0, 1])
    # g1' = g1 - (g1.g2)/|g2|^2 g2 = (0.5, 0.5); g2' = g2 - (g2.g1)/|g1|^2 g1 = (0, 1)
    assert torch.allclose(d, torch.tensor([0.5, 1.5]))
    assert torch.allclose(torch.tensor([0.5, 0.5]) @ grads[1], torch.tensor(0.0))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(make("pcgrad").combine_gradients(agreeing, torch.ones(2), [0, 1]), agreeing.sum(0))


@pytest.mark.parametrize("seed", range(5))
def test_mgda_finds_the_min_norm_point_of_two_gradients(seed: int) -> None:
    g = torch.randn(2, 7, generator=torch.Generator().manual_seed(seed))
    g1, g2 = g
    alpha = ((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1)  # closed form (Sener & Koltun 2018)
    expected = alpha * g1 + (1 - alpha) * g2
    d = make("mgda").combine_gradients(g, torch.ones(2), [0, 1])
    assert torch.allclose(d, expected, atol=1e-5)


def test_mgda_three_tasks_satisfies_the_min_norm_optimality_condition() -> None:
    g = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    w = min_norm_weights(normalized_gram(g)).float()
    d = w @ g
    assert w.min() >= 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    # d is the min-norm point of the hull iff d . g_t >= |d|^2 for every t
    assert (g @ d >= d @ d - 1e-5).all()


def test_nash_mtl_orthogonal_gradients_are_weighted_by_inverse_norm() -> None:
    g = torch.diag(torch.tensor([1.0, 4.0, 0.5]))
    alpha = nash_weights(normalized_gram(g), iterations=30)
    m = normalized_gram(g)
    assert torch.allclose(m @ alpha, 1 / alpha, rtol=1e-6)  # the bargaining condition
    d = make("nash_mtl", tasks=["a", "b", "c"]).combine_gradients(g, torch.ones(3), [0, 1, 2])
    direction = (g / g.norm(dim=1, keepdim=True)).sum(0)
    assert torch.allclose(d / d.norm(), direction / direction.norm(), atol=1e-4)


def test_imtl_gives_equal_projections_on_every_task_direction() -> None:
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    d = make("imtl", tasks=["a", "b", "c"]).combine_gradients(g, torch.ones(3), [0, 1, 2])
    projections = (g / g.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(projections, projections[0].expand(3), rtol=1e-4)


def test_aligned_mtl_scales_orthogonal_gradients_to_the_smallest_singular_value() -> None:
    g = torch.diag(torch.tensor([2.0, 0.5]))
    d = make("aligned_mtl").combine_gradients(g, torch.ones(2), [0, 1])
    assert torch.allclose(d, torch.tensor([0.5, 0.5]), atol=1e-5)


def test_cagrad_with_zero_radius_is_the_mean_gradient() -> None:
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    d = make("cagrad", tasks=["a", "b", "c"], c=0.0).combine_gradients(g, torch.ones(3), [0, 1, 2])
    assert torch.allclose(d, g.mean(0), atol=1e-6)
    # with a radius the worst task improves at least as much as under the mean gradient
    d = make("cagrad", tasks=["a", "b", "c"], c=0.5, iterations=100).combine_gradients(g, torch.ones(3), [0, 1, 2])
    assert (g @ d).min() >= (g @ g.mean(0)).min() * (1 / 1.25) - 1e-5


def test_gradvac_lifts_a_conflicting_pair_to_the_target_cosine() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    balancer = make("gradvac", beta=0.5)
    d = balancer.combine_gradients(g, torch.ones(2), [0, 1])
    # with target cosine 0 (the first step) each conflicting gradient is lifted to orthogonality:
    # g1' = (0.5, 0.5), g2' = (0, 1), as PCGrad would; the targets move halfway to cos = -0.7071
    assert torch.allclose(d, torch.tensor([0.5, 1.5]), atol=1e-5)
    assert torch.allclose(balancer.target, torch.tensor([[0.0, -0.3536], [-0.3536, 0.0]]), atol=1e-3)


def test_gradnorm_raises_the_weight_of_the_task_with_the_smaller_gradient() -> None:
    balancer = make("gradnorm", lr=0.1)
    g = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    for _ in range(5):
        balancer.combine_gradients(g, torch.ones(2), [0, 1])
    w = balancer.learned
    assert w[0] > 1 > w[1] and torch.isclose(w.sum(), torch.tensor(2.0))


def test_db_mtl_balances_gradient_magnitudes() -> None:
    g = torch.diag(torch.tensor([1.0, 10.0]))
    d = make("db_mtl").combine_gradients(g, torch.tensor([2.0, 1.0]), [0, 1])
    # log-gradients (0.5, 0) and (0, 10) are each scaled to the largest norm
    assert torch.allclose(d / d[1], torch.tensor([1.0, 1.0]))


def test_non_finite_task_gradient_does_not_poison_the_others() -> None:
    g = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 2.0]])
    clean = sanitize(g)
    assert torch.equal(clean[1], torch.zeros(2)) and torch.equal(clean[2], g[2])
    for name in ("pcgrad", "mgda", "imtl", "nash_mtl", "aligned_mtl", "cagrad", "db_mtl", "gradvac", "gradnorm"):
        balancer = make(name, tasks=["a", "b", "c"])
        assert torch.isfinite(balancer.update(clean, torch.ones(3), [0, 1, 2])).all(), name
        assert torch.isfinite(balancer.weights).all(), name


GRADIENT_BALANCERS = [n for n in BALANCERS.keys() if BALANCERS.get(n).kind == "gradient"]


@pytest.mark.parametrize("name", GRADIENT_BALANCERS)
def test_balancing_stand_in_rows_with_the_same_gram_matrix_gives_the_same_weights(name: str) -> None:
    # data-parallel training on the representation balances gram_factor(G G^T) instead of G; a
    # balancer flagged inner_products_only must then take exactly the same decision, twice in a row
    # (state such as GradVac's targets or GradNorm's weights carries over)
    torch.manual_seed(0)
    grads = [torch.randn(3, 40) + torch.tensor([[0.0], [0.5], [-0.3]]) for _ in range(2)]
    losses = torch.tensor([1.0, 2.0, 0.5])
    direct, proxy = make(name, tasks=["a", "b", "c"]), make(name, tasks=["a", "b", "c"])
    if not BALANCERS.get(name).inner_products_only:
        pytest.skip(f"{name} averages gradient vectors (refused with on=representation under data parallelism)")
    for g in grads:
        factor = gram_factor(g @ g.T)
        assert factor.shape == (3, 3) and torch.allclose(factor @ factor.T, g @ g.T, atol=1e-4)
        combined = direct.update(g, losses, [0, 1, 2])
        proxy.update(factor, losses, [0, 1, 2])
        assert torch.allclose(proxy.weights, direct.weights, atol=1e-4, rtol=1e-3), (proxy.weights, direct.weights)
        assert torch.allclose(proxy.weights @ g, combined, atol=1e-4, rtol=1e-3)


def test_gram_factor_of_parallel_and_zero_gradients_is_finite() -> None:
    g = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 0.0]])
    factor = gram_factor(g @ g.T)
    assert torch.isfinite(factor).all() and torch.allclose(factor @ factor.T, g @ g.T, atol=1e-3)


def test_balancer_random_draws_come_from_its_own_checkpointed_generator() -> None:
    first = make("pcgrad", tasks=["a", "b", "c", "d"])
    orders = [first.random_order(4) for _ in range(2)]
    torch.randn(1000)  # other consumers of torch's global generator (dropout) change nothing
    second = make("pcgrad", tasks=["a", "b", "c", "d"])
    assert [second.random_order(4) for _ in range(2)] == orders
    state = second.state_dict()
    upcoming = second.random_order(4)
    third = make("pcgrad", tasks=["a", "b", "c", "d"])
    third.load_state_dict(state)
    assert third.random_order(4) == upcoming


# ---------------------------------------------------------------- loss weighting

def test_uncertainty_weights_move_toward_inverse_noise() -> None:
    torch.manual_seed(0)
    noise = torch.tensor([0.5, 2.0])
    x = torch.randn(512, 4)
    true = torch.randn(4)
    ys = [x @ true + s * torch.randn(512) for s in noise]
    weight = nn.Parameter(torch.zeros(4))
    balancer = make("uncertainty")
    opt = torch.optim.Adam([weight, *balancer.parameters()], lr=0.05)
    for _ in range(400):
        losses = {t: ((x @ weight - y) ** 2).mean() for t, y in zip(TWO, ys)}
        opt.zero_grad()
        balancer.combine(losses).backward()
        opt.step()
    w = balancer.task_weights()
    # optimum: exp(-s_t) = 1 / L_t ~ 1 / sigma_t^2
    assert w["a"] == pytest.approx(1 / 0.25, rel=0.25) and w["b"] == pytest.approx(1 / 4.0, rel=0.25)


def test_dwa_favours_the_task_whose_loss_falls_slower() -> None:
    balancer = make("dwa", window=1)
    for step in range(3):
        balancer.combine({"a": torch.tensor(1.0), "b": torch.tensor(0.5 ** step)})
    w = balancer.weights
    assert w[0] > w[1] and torch.isclose(w.sum(), torch.tensor(2.0))


def test_gls_is_the_geometric_mean() -> None:
    losses = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(8.0, requires_grad=True)}
    total = make("gls").combine(losses)
    assert total.item() == pytest.approx(4.0)
    total.backward()
    assert losses["a"].grad.item() == pytest.approx(1.0) and losses["b"].grad.item() == pytest.approx(0.25)


def test_rlw_draws_new_weights_on_the_simplex() -> None:
    balancer = make("rlw")
    seen = []
    for _ in range(3):
        balancer.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
        seen.append(balancer.weights.clone())
        assert torch.isclose(seen[-1].sum(), torch.tensor(1.0))
    assert not torch.allclose(seen[0], seen[1])


def test_famo_shifts_weight_to_the_task_that_stalls() -> None:
    balancer = make("famo", lr=0.1)
    for step in range(20):
        balancer.combine({"a": torch.tensor(1.0), "b": torch.tensor(0.9 ** step)})
    z = torch.softmax(balancer.logits, 0)
    assert z[0] > z[1]


def test_bad_balancer_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="balancer.on must be one of"):
        resolve_config({}, ["balancer.on=trunk"])
    with pytest.raises(ConfigError, match="update_every"):
        resolve_config({}, ["balancer.update_every=0"])


# ---------------------------------------------------------------- the mechanism in the trainer

class SumOfGradients(GradientBalancer):
    """Test double: the plain sum of task gradients, so the result must equal one backward of the sum."""

    def combine_gradients(self, grads, losses, ids):
        return grads.sum(0)


def _grads_of(trainer: Trainer, batch, balancer=None, scaler=None, autocast=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    backward = BalancedBackward(trainer.model, balancer or trainer.balancer, scaler or trainer.scaler)
    cache = backward.new_cache(0)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):  # the forward only, as in the trainer
        losses = trainer.model(batch, cache)
    trainer.model.zero_grad(set_to_none=True)
    backward(losses, cache, 0, monitor=False)
    if scaler is not None:
        scaler.unscale_(torch.optim.SGD(trainer.model.parameters(), lr=0.0))
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def micro_trainer(micro_data: Path, tmp_path_factory) -> tuple[Trainer, object]:
    out = tmp_path_factory.mktemp("mech")
    trainer = Trainer(resolve_config({}, micro_overrides(micro_data, out / "run") + ["model.dropout=0.0"]))
    batch = next(iter(trainer._loader())).to(trainer.device)
    return trainer, batch


def test_a_decoder_shared_by_the_generation_tasks_is_balanced_as_a_shared_part(micro_data: Path, tmp_path: Path) -> None:
    """With one decoder for captioning and summarization (``model.decoder.shared``), gradient balancing
    on the parameters must give it the same gradient as one backward of the summed loss (it got none)."""
    trainer = Trainer(resolve_config({}, micro_overrides(micro_data, tmp_path / "run") + [
        "model.dropout=0.0", "model.decoder.shared=true"]))
    batch = next(iter(trainer._loader())).to(trainer.device)
    reference = _grads_of(trainer, batch)
    combined = _grads_of(trainer, batch, balancer=SumOfGradients(trainer.config.tasks, BalancerConfig(on="params")))
    decoder = [n for n in reference if n.startswith("shared_heads.")]
    assert decoder
    for name in decoder:
        assert name in combined and torch.allclose(combined[name], reference[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("on", ["params", "representation"])
def test_per_task_gradients_sum_to_the_gradient_of_the_summed_loss(micro_trainer, on: str) -> None:
    trainer, batch = micro_trainer
    reference = _grads_of(trainer, batch)  # equal weighting: one backward of the sum
    double = SumOfGradients(trainer.config.tasks, BalancerConfig(on=on))
    combined = _grads_of(trainer, batch, balancer=double)
    shared = [n for n in reference if n.startswith(("encoders.", "fusion."))]
    assert shared and any(n.startswith("heads.") for n in combined)
    for name, grad in reference.items():
        assert torch.allclose(combined[name], grad, atol=1e-5, rtol=1e-4), name
    # an enabled GradScaler: per-task gradients are unscaled before combining and rescaled after
    scaled = _grads_of(trainer, batch, balancer=double, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    for name, grad in reference.items():
        assert torch.allclose(scaled[name], grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("on", ["params", "representation"])
def test_one_batched_backward_gives_the_per_task_gradients_of_t_backwards(micro_trainer, on: str) -> None:
    trainer, batch = micro_trainer
    grads = {}
    for batched in (False, True):
        balancer = make("mgda", tasks=trainer.config.tasks, on=on)
        balancer.config.batched_backward = batched
        grads[batched] = _grads_of(trainer, batch, balancer=balancer)
    assert grads[True].keys() == grads[False].keys() and any(n.startswith("heads.") for n in grads[True])
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("on", ["params", "representation"])
def test_fp16_autocast_gives_the_fp32_combined_gradient(micro_trainer, on: str) -> None:
    # per-task gradients are unscaled before MGDA combines them and rescaled after, so fp16 autocast
    # under a GradScaler agrees with fp32 up to fp16 rounding (the GPU path, run on the CPU here)
    trainer, batch = micro_trainer
    reference = _grads_of(trainer, batch, balancer=make("mgda", tasks=trainer.config.tasks, on=on))
    half = _grads_of(trainer, batch, balancer=make("mgda", tasks=trainer.config.tasks, on=on),
                     scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16), autocast=torch.float16)
    shared = [n for n in reference if n.startswith(("encoders.", "fusion."))]
    assert shared and reference.keys() == half.keys()
    for name in shared:
        assert torch.isfinite(half[name]).all(), name
    flat = lambda grads: torch.cat([grads[n].flatten() for n in shared])  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(flat(reference), flat(half), dim=0)
    assert cosine > 0.999 and torch.allclose(flat(half).norm(), flat(reference).norm(), rtol=0.02)


@pytest.mark.parametrize("on", ["params", "representation"])
def test_an_fp16_overflow_in_a_task_gradient_makes_the_scaler_skip_the_step(micro_trainer, on: str) -> None:
    trainer, batch = micro_trainer
    model = trainer.model
    balancer = make("pcgrad", tasks=trainer.config.tasks, on=on)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    backward = BalancedBackward(model, balancer, scaler)
    cache = backward.new_cache(0)
    losses = model(batch, cache)
    losses["captioning"] = losses["captioning"] * 1e36  # its scaled gradient overflows, the others' do not
    model.zero_grad(set_to_none=True)
    backward(losses, cache, 0, monitor=False)
    # the overflow reaches the shared gradient (not zeroed away), so the scaler sees it ...
    assert not all(torch.isfinite(p.grad).all() for p in backward.shared if p.grad is not None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.step(optimizer)
    scaler.update()
    # ... skips the update and lowers the scale
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert scaler.get_scale() < 2.0**16
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", BALANCERS.keys())
def test_every_balancer_trains_and_its_state_survives_resume(name: str, micro_data: Path, tmp_path: Path) -> None:
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=2) + [f"balancer.name={name}"]
    trainer = Trainer(resolve_config({}, overrides))
    batches = iter(trainer._loader())
    for monitor in (False, True):
        out = trainer.train_step(next(batches).to(trainer.device), monitor=monitor)
    assert all(torch.isfinite(value).all() for value in out.values())
    assert "grad_norm/captioning" in out and -1.0 <= out["grad_cos/recognition|captioning"].item() <= 1.0
    assert all(math.isfinite(w) for w in trainer.balancer.task_weights().values())
    state = load_train_state(trainer.save())["balancer"]
    assert "weights" in state
    resumed = Trainer(resolve_config({}, overrides + ["train.steps=3"]), resume="latest")
    restored = resumed.balancer.state_dict()
    assert state.keys() == restored.keys() and resumed.step == 2
    for key, value in state.items():
        if key == "_extra_state":  # the balancer's own random stream
            assert torch.equal(restored[key]["generator"], value["generator"])
            continue
        assert torch.equal(restored[key].cpu(), value), key


def test_training_logs_and_plots_the_task_monitor(micro_data: Path, tmp_path: Path) -> None:
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=2) + [
        "balancer.name=pcgrad", "balancer.on=representation", "train.monitor_every=1"]
    train(resolve_config({}, overrides))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for record in records:
        assert record["grad_norm/summarization"] > 0 and "grad_cos/captioning|summarization" in record
        assert "loss/grad_norm/captioning" not in record
    for png in ("task_grad_norm.png", "task_grad_cosine.png", "task_weights.png", "loss_captioning.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000, png


def test_update_every_and_representation_space(micro_data: Path, tmp_path: Path) -> None:
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=3) + [
        "balancer.name=mgda", "balancer.on=representation", "balancer.update_every=2"]
    trainer = Trainer(resolve_config({}, overrides))
    assert [trainer.backward.per_task_step(s) for s in range(4)] == [True, False, True, False]
    assert "shared_outputs" in trainer.backward.new_cache(0) and trainer.backward.new_cache(1) == {}
    batches = iter(trainer._loader())
    first = trainer.train_step(next(batches).to(trainer.device), monitor=False)
    weights = trainer.balancer.weights.clone()
    assert not torch.allclose(weights, torch.ones(3))  # MGDA weights (on the simplex) were recorded
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-3)
    second = trainer.train_step(next(batches).to(trainer.device), monitor=True)
    assert torch.equal(trainer.balancer.weights, weights)  # not due: reused, not recomputed
    losses = torch.stack([second[t] for t in trainer.config.tasks])
    assert second["total"].item() == pytest.approx((weights * losses).sum().item(), rel=1e-5)
    assert math.isfinite(first["total"].item())
