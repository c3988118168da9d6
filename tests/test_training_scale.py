"""Training at scale on a CPU: accumulation, non-finite steps, EMA, checkpointing, pure bf16, OOM advice."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.inference import Predictor
from mmtl.training.acceleration import enable_grad_checkpointing
from mmtl.checkpoint import EMA_FILE, resolve_checkpoint
from mmtl.training.loop import Trainer
from tests.conftest import micro_overrides, sigterm_after_step, without_batchnorm

# exact comparisons run in fp32 on the CPU (a GPU would default to bf16 autocast)
RECOGNITION = ["tasks=[recognition]", "data.batch_size=8", "train.device=cpu"]


def _trainer(micro_data: Path, out: Path, *extra: str) -> Trainer:
    return Trainer(resolve_config({}, micro_overrides(micro_data, out) + list(extra)))


def _without_batchnorm(trainer: Trainer) -> Trainer:
    without_batchnorm(trainer.model)
    return trainer


def _first_batch(trainer: Trainer):
    return next(iter(trainer._loader())).to(trainer.device)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


@pytest.mark.parametrize("balancer", ["equal", "pcgrad"])  # one backward, and the per-task gradient path
def test_two_accumulated_half_batches_equal_one_full_batch(micro_data: Path, tmp_path: Path, one_thread,
                                                            balancer: str) -> None:
    # recognition averages over rows, so two half batches sum to the full batch's gradient
    extra = [*RECOGNITION, f"balancer.name={balancer}"]
    full = _without_batchnorm(_trainer(micro_data, tmp_path / "a", *extra))
    batch = _first_batch(full)
    accumulated = _without_batchnorm(_trainer(micro_data, tmp_path / "b", *extra, "train.grad_accum=2"))
    full.train_step(batch)
    accumulated.train_step([batch.subset(range(0, 4)), batch.subset(range(4, 8))])
    one, two = _params(full), _params(accumulated)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    # and the update was real: the weights moved
    fresh = _params(_trainer(micro_data, tmp_path / "c", *extra))
    assert max((one[k] - fresh[k]).abs().max().item() for k in one) > 1e-4


def test_a_nan_loss_skips_the_update_and_k_in_a_row_stop_the_run(micro_data: Path, tmp_path: Path, one_thread) -> None:
    trainer = _trainer(micro_data, tmp_path / "run", "train.max_nonfinite_steps=2")
    batch = _first_batch(trainer)
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        losses = forward(*args, **kwargs)
        losses["captioning"] = losses["captioning"] * float("nan")
        return losses

    trainer.model.forward = poisoned
    before = _params(trainer)
    trainer.train_step(batch)
    assert trainer.guard.skipped == 1 and trainer.step == 1
    assert all(torch.equal(before[k], v) for k, v in _params(trainer).items())  # nothing moved
    with pytest.raises(MMTLError, match=r"2 steps in a row had a non-finite loss of captioning"):
        trainer.train_step(batch)
    trainer.model.forward = forward
    trainer.guard.streak = 0
    trainer.train_step(batch)  # a good step applies and resets the streak
    assert trainer.guard.streak == 0 and trainer.guard.skipped == 2
    assert any(not torch.equal(before[k], v) for k, v in _params(trainer).items())


def test_ema_follows_the_weights_is_checkpointed_and_used_for_inference(micro_data: Path, tmp_path: Path, one_thread) -> None:
    trainer = _trainer(micro_data, tmp_path / "run", "train.ema_decay=0.5", "train.steps=2")
    batches = iter(trainer._loader())
    trainer.train_step(next(batches).to(trainer.device))
    first = _params(trainer)
    trainer.train_step(next(batches).to(trainer.device))
    second = _params(trainer)
    averaged = dict(trainer.ema.module.named_parameters())
    name = "heads.recognition.queries" if "heads.recognition.queries" in second else next(iter(second))
    expected = 0.5 * first[name] + 0.5 * second[name]  # the first update copies, the second averages
    assert torch.allclose(averaged[name], expected, atol=1e-6)
    assert not torch.allclose(averaged[name], second[name])
    checkpoint = trainer.save()
    assert (checkpoint / EMA_FILE).is_file()
    predictor = Predictor.from_pretrained(checkpoint)
    assert torch.equal(dict(predictor.model.named_parameters())[name], averaged[name].detach())
    resumed = Trainer(resolve_config({}, micro_overrides(micro_data, tmp_path / "run") +
                                     ["train.ema_decay=0.5", "train.steps=2"]), resume="latest")
    assert resumed.ema.updates == 2
    assert torch.equal(dict(resumed.ema.module.named_parameters())[name], averaged[name].detach())


def test_gradient_checkpointing_gives_the_same_gradients(micro_data: Path, tmp_path: Path, one_thread) -> None:
    # mgda: per-task backward passes through the recomputed graph (retain_graph), and no randomness
    plain = _trainer(micro_data, tmp_path / "a", "balancer.name=mgda", "train.device=cpu")
    batch = _first_batch(plain)
    recomputed = _trainer(micro_data, tmp_path / "b", "balancer.name=mgda", "train.device=cpu")
    assert enable_grad_checkpointing(recomputed.model) > 0
    out_a, out_b = plain.train_step(batch), recomputed.train_step(batch)
    for task in plain.task_names:
        assert torch.allclose(out_a[task], out_b[task], atol=1e-6)
    a, b = _params(plain), _params(recomputed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_pure_bf16_keeps_bf16_weights_and_trains(micro_data: Path, tmp_path: Path, one_thread) -> None:
    trainer = _trainer(micro_data, tmp_path / "run", "train.precision=pure_bf16", "train.steps=2")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    result = trainer.run()
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final_losses.values())
    assert {p.dtype for p in result.components.model.parameters()} == {torch.bfloat16}


def test_run_saves_environment_mfu_and_memory(micro_data: Path, tmp_path: Path, one_thread) -> None:
    _trainer(micro_data, tmp_path / "run", "train.steps=2").run()
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"]
    assert env["device"] == "cpu" and env["world_size"] == 1
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert 0 < record["mfu"] < 1 and record["gpu_memory_gb"] == 0.0 and record["nonfinite_skipped"] == 0


def test_out_of_memory_gives_advice_not_a_traceback(micro_data: Path, tmp_path: Path, monkeypatch, one_thread) -> None:
    trainer = _trainer(micro_data, tmp_path / "run", "train.steps=2")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_step", out_of_memory)
    with pytest.raises(MMTLError, match="out of GPU memory at step 1.*train.grad_accum.*grad_checkpointing"):
        trainer.run()


def test_keep_checkpoints_bounds_the_number_kept(micro_data: Path, tmp_path: Path, one_thread) -> None:
    _trainer(micro_data, tmp_path / "run", "train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=2").run()
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert kept == ["step-00000003", "step-00000004"]
    assert resolve_checkpoint(tmp_path / "run").name == "step-00000004"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stopped_and_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(
        micro_data: Path, tmp_path: Path, monkeypatch, one_thread, workers: int) -> None:
    from safetensors.torch import load_file

    from mmtl.errors import TrainingInterrupted

    extra = [f"data.num_workers={workers}", "train.steps=6", "train.device=cpu", "data.shuffle_buffer=20",
             "train.ema_decay=0.9", "balancer.name=dwa", "train.monitor_every=2"]
    _trainer(micro_data, tmp_path / "whole", *extra).run()
    original = sigterm_after_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        _trainer(micro_data, tmp_path / "split", *extra).run()
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(resolve_config({}, micro_overrides(micro_data, tmp_path / "split") + extra), resume="latest")
    assert resumed.step == 3 and resumed.batches_consumed == 3
    resumed.run()
    whole, split = (resolve_checkpoint(tmp_path / name) for name in ("whole", "split"))
    for file in ("model.safetensors", EMA_FILE):
        a, b = load_file(str(whole / file)), load_file(str(split / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    logs = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("whole", "split")]
    losses = [[{k: v for k, v in r.items() if k.startswith(("loss/", "weight/"))} for r in log] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_compiled_blocks_compute_what_eager_blocks_do(one_thread) -> None:
    from mmtl.models.layers import EncoderBlock
    from mmtl.training.acceleration import compile_blocks

    torch.manual_seed(0)
    eager = torch.nn.Sequential(EncoderBlock(16, 2))
    compiled = torch.nn.Sequential(EncoderBlock(16, 2))
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks(compiled) == 1
    x = torch.randn(2, 5, 16, requires_grad=True)
    y_eager, y_compiled = eager(x), compiled(x)
    assert torch.allclose(y_eager, y_compiled, atol=1e-5)
    # per-task gradients differentiate one graph several times: compiled blocks must allow it
    first = torch.autograd.grad(y_compiled.sum(), x, retain_graph=True)[0]
    second = torch.autograd.grad(y_compiled.pow(2).sum(), x)[0]
    assert torch.allclose(first, torch.autograd.grad(y_eager.sum(), x, retain_graph=True)[0], atol=1e-5)
    assert torch.allclose(second, torch.autograd.grad(y_eager.pow(2).sum(), x)[0], atol=1e-4)
