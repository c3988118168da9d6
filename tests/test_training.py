import json
import time
from pathlib import Path

import pytest
import torch

from mmtl.cli import main
from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.inference import Predictor
from mmtl.checkpoint import LATEST, load_train_state, resolve_checkpoint
from mmtl.training import loop
from mmtl.training.loop import Trainer
from mmtl.training.run import train
from mmtl.training.optim import lr_factor
from tests.conftest import micro_overrides, sigterm_after_step


def test_training_writes_a_complete_run_directory(micro_data: Path, tmp_path: Path) -> None:
    config = resolve_config({}, micro_overrides(micro_data, tmp_path / "run", steps=4) + ["train.checkpoint_every=2"])
    result = train(config)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "loss_captioning.png").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(f"loss/{t}" in records[-1] for t in config.tasks)
    # per-task gradient statistics cost extra backward passes: only every train.monitor_every
    # steps (default 50) and at the last step, not on every log step
    assert [any(k.startswith("grad_norm/") for k in r) for r in records] == [False, False, False, True]
    assert (run / "checkpoints" / LATEST).read_text() == "step-00000004"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert not list((run / "checkpoints").glob(".*tmp*"))  # no temp leftovers
    assert load_train_state(result.checkpoint)["step"] == 4


def test_step_seconds_count_the_steps_alone(micro_data: Path, tmp_path: Path, monkeypatch) -> None:
    """bench_recipe compares step time at equal wall or CPU time: one-off work (checkpoints, FLOP counting)
    must not count on either clock, or the comparison is unfair to mmtl."""
    save, count = loop.Trainer.save, loop.step_flops

    def busy_count(*args):  # 1.5 CPU seconds (and as much wall time at least) of FLOP counting
        until = time.process_time() + 1.5
        while time.process_time() < until:
            pass
        return count(*args)

    monkeypatch.setattr(loop.Trainer, "save", lambda self: (time.sleep(0.5), save(self))[1])
    monkeypatch.setattr(loop, "step_flops", busy_count)
    config = resolve_config({}, micro_overrides(micro_data, tmp_path / "run", steps=3) + ["train.checkpoint_every=1"])
    result = train(config)
    # three checkpoints (steps 1, 2 and the final one) and one FLOP count: 3 s of one-off work
    assert result.seconds - result.step_seconds >= 3.0
    assert 0 < result.step_seconds < result.seconds
    assert 0 < result.step_cpu_seconds < 1.5  # three micro steps, without the FLOP count's CPU seconds


def test_predictor_reproduces_the_trained_model(micro_data: Path, tmp_path: Path) -> None:
    config = resolve_config({}, micro_overrides(micro_data, tmp_path / "run", steps=2))
    result = train(config)
    predictor = Predictor.from_pretrained(tmp_path / "run")
    trained = result.components.model.state_dict()
    loaded = predictor.model.state_dict()
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k].cpu(), loaded[k]) for k in trained)
    assert predictor.components.classes == result.components.classes


def test_resume_continues_from_the_saved_step(micro_data: Path, tmp_path: Path) -> None:
    base = micro_overrides(micro_data, tmp_path / "run", steps=2)
    train(resolve_config({}, base))
    trainer = Trainer(resolve_config({}, base + ["train.steps=4"]), resume="latest")
    assert trainer.step == 2
    assert trainer.scheduler.last_epoch == 2
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]


def test_resuming_with_other_settings_is_a_one_line_error(micro_data: Path, tmp_path: Path, capsys) -> None:
    base = micro_overrides(micro_data, tmp_path / "run", steps=2)
    assert main(["train", *base]) == 0
    capsys.readouterr()
    for changed in ("balancer.name=uncertainty", "model.width=64"):
        assert main(["train", *base, "train.steps=3", changed, "--resume", "latest"]) == 2, changed
        err = capsys.readouterr().err.strip()
        assert err.startswith("mmtl: error:") and "\n" not in err and "step-00000002" in err, err


def test_resume_without_checkpoint_is_a_clear_error(micro_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MMTLError, match="no checkpoint found"):
        Trainer(resolve_config({}, micro_overrides(micro_data, tmp_path / "empty")), resume="latest")
    with pytest.raises(MMTLError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path)


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    config = resolve_config({}, ["train.steps=100", "train.warmup_steps=10"]).train
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] < 0.1


def test_fresh_run_refuses_to_mix_with_an_existing_run_unless_overwrite(micro_data: Path, tmp_path: Path) -> None:
    base = micro_overrides(micro_data, tmp_path / "run", steps=2)
    train(resolve_config({}, base))
    with pytest.raises(MMTLError, match="already holds a run"):
        Trainer(resolve_config({}, base))
    train(resolve_config({}, base + ["train.overwrite=true"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # the old run's records are gone, not appended to


def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes(micro_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:

    original = sigterm_after_step(monkeypatch, 2)
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=5)
    assert main(["train", *overrides]) == 143
    err = capsys.readouterr().err
    assert "SIGTERM at step 2" in err and "--resume latest" in err and "Traceback" not in err
    assert load_train_state(resolve_checkpoint(tmp_path / "run"))["step"] == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", *overrides, "--resume", "latest"]) == 0
    assert load_train_state(resolve_checkpoint(tmp_path / "run"))["step"] == 5


def test_same_config_and_seed_give_the_same_run(micro_data: Path, tmp_path: Path) -> None:
    def losses(run: str) -> list[float]:
        train(resolve_config({}, micro_overrides(micro_data, tmp_path / run, steps=3)))
        records = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [r["loss/total"] for r in records]

    assert losses("a") == losses("b")


def test_a_step_after_evaluation_trains_every_module_in_training_mode(micro_data: Path, tmp_path: Path) -> None:
    """train_step switches modes only when the model is not training (eval() clears the flag)."""
    trainer = Trainer(resolve_config({}, micro_overrides(micro_data, tmp_path / "run", steps=2)))
    batch = next(iter(trainer._loader()))
    trainer.model.eval()  # as evaluation and FLOP counting leave it
    seen: list[bool] = []
    hook = trainer.model.encoders["image"].register_forward_pre_hook(
        lambda module, args: seen.append(all(m.training for m in trainer.model.modules())))
    trainer.train_step(batch)
    hook.remove()
    assert seen == [True]


def test_a_single_task_run_skips_the_per_task_gradient_monitor(micro_data: Path, tmp_path: Path, monkeypatch) -> None:
    """With one objective the monitor's extra backward pass compares nothing: it is not run."""
    import mmtl.balancing.backward as backward_module

    calls: list[int] = []
    stats = backward_module.task_gradient_stats
    monkeypatch.setattr(backward_module, "task_gradient_stats", lambda *a: calls.append(1) or stats(*a))
    overrides = micro_overrides(micro_data, tmp_path / "run", steps=2) + ["tasks=[recognition]", "train.monitor_every=1"]
    train(resolve_config({}, overrides))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert calls == [] and not any(k.startswith("grad_norm/") for r in records for k in r)
    assert all(r["grad_norm"] > 0 for r in records)  # the step's own gradient norm is still logged
