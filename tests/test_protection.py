""""No task left behind" (validation.protect): the factor rule, and a real run that scales a lagging task's loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtl.config import resolve_config
from mmtl.evaluation.evaluate import EvalResult
from mmtl.training.protection import TaskProtection, format_verdicts
from mmtl.training.run import make_trainer
from tests.conftest import micro_overrides


def test_a_task_behind_its_reference_is_boosted_up_to_the_cap_and_released_once_it_catches_up() -> None:
    protection = TaskProtection(tolerance=0.01, boost=2.0, max_factor=4.0, references={"a": 10.0, "b": 5.0})
    standings = protection.update({"a": 9.0, "b": 5.0})  # a is 10% behind, b level with its reference
    assert standings["a"].behind and not standings["b"].behind
    assert standings["a"].change == pytest.approx(-0.1)
    assert protection.factors == {"a": 2.0, "b": 1.0}
    protection.update({"a": 9.5, "b": 5.2})
    protection.update({"a": 9.8, "b": 5.2})
    assert protection.factors["a"] == 4.0  # capped at protect_max
    protection.update({"a": 9.95, "b": 5.2})  # within the 1% tolerance: no longer behind
    assert protection.factors["a"] == 2.0
    protection.update({"a": 10.1, "b": 5.2})
    protection.update({"a": 10.2, "b": 5.2})
    assert protection.factors == {"a": 1.0, "b": 1.0}  # never below 1


def test_a_boost_every_task_shares_is_no_boost_so_factors_stay_relative() -> None:
    """Early in a run every task is below its single-task model; multiplying every loss by the same
    factor changes no task's share of the update (AdamW does not see a common scale), so the factors
    are kept relative to the least protected task, and only tasks behind more than others gain."""
    protection = TaskProtection(tolerance=0.01, boost=2.0, max_factor=8.0, references={"a": 10.0, "b": 5.0, "c": 1.0})
    protection.update({"a": 2.0, "b": 1.0, "c": 0.1})  # every task far behind
    assert protection.factors == {"a": 1.0, "b": 1.0, "c": 1.0}
    protection.update({"a": 9.0, "b": 5.0, "c": 0.5})  # b caught up: a and c are the ones behind
    assert protection.factors == {"a": 2.0, "b": 1.0, "c": 2.0}
    protection.update({"a": 9.0, "b": 4.0, "c": 0.5})  # all behind again: the shares stay where they are
    assert protection.factors == {"a": 2.0, "b": 1.0, "c": 2.0}
    protection.update({"a": 10.0, "b": 4.0, "c": 0.5})  # a caught up, b and c behind
    assert protection.factors == {"a": 1.0, "b": 2.0, "c": 4.0}


def test_without_baselines_a_task_is_behind_when_it_falls_below_its_own_best() -> None:
    protection = TaskProtection(tolerance=0.05, boost=2.0, max_factor=8.0)
    assert not any(s.behind for s in protection.update({"a": 0.5, "b": 0.5}).values())  # first: no reference
    protection.update({"a": 0.8, "b": 0.6})
    standings = protection.update({"a": 0.7, "b": 0.7})  # a fell 12.5% below its best; b improves
    assert standings["a"].behind and not standings["b"].behind
    assert protection.factors == {"a": 2.0, "b": 1.0}
    scaled = protection.scale({"a": torch.tensor(3.0), "b": torch.tensor(1.0)})
    assert float(scaled["a"]) == 6.0 and float(scaled["b"]) == 1.0
    restored = TaskProtection(tolerance=0.05, boost=2.0, max_factor=8.0)
    restored.load_state_dict(json.loads(json.dumps(protection.state_dict())))
    assert restored.factors == protection.factors and restored.best == protection.best
    table = format_verdicts(protection.verdicts(), "own best validation")
    assert "BEHIND" in table.splitlines()[2] and "-12.5%" in table


def _evaluate_with(values: dict[str, float]):
    def evaluate(components, config, device, split=None, **kwargs):
        return EvalResult(split, 16, {t: {"m": v} for t, v in values.items()}, {}, {t: "m" for t in values},
                          losses={t: 1.0 for t in values})
    return evaluate


def test_a_run_scales_the_loss_of_the_task_behind_its_single_task_model(micro_data: Path, tmp_path: Path,
                                                                          monkeypatch, one_thread) -> None:
    import mmtl.training.logging as run_logs
    import mmtl.training.validation as validation

    monkeypatch.setattr(run_logs, "plot_losses", lambda *a, **k: [])  # where finish_run looks them up
    monkeypatch.setattr(run_logs, "plot_task_monitor", lambda *a, **k: [])
    monkeypatch.setattr(validation, "plot_validation", lambda *a, **k: None)
    monkeypatch.setattr(validation, "evaluate", _evaluate_with({"recognition": 0.5, "captioning": 0.5,
                                                                "summarization": 0.5}))
    baselines = tmp_path / "baselines.json"  # captioning's single-task model is far ahead; the others level
    baselines.write_text(json.dumps({"split": "test", "max_samples": 0, "split_max_samples": {"val": 0}, "tasks": {
        t: {"metrics": {"m": v}, "primary_metric": "m", "split_metrics": {"val": {"m": v}}}
        for t, v in {"recognition": 0.5, "captioning": 0.9, "summarization": 0.5}.items()}}))
    run = tmp_path / "run"
    overrides = micro_overrides(micro_data, run, steps=6) + [
        "validation.protect=true", f"validation.baselines={baselines}", "train.checkpoint_every=0"]
    trainer = make_trainer(resolve_config({}, overrides))
    seen: list[dict[str, float]] = []

    class Recording:  # the losses the balancer receives
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def __call__(self, losses, *args, **kwargs):
            seen.append({n: float(v) for n, v in losses.items()})
            return self.inner(losses, *args, **kwargs)
    trainer.backward = Recording(trainer.backward)
    unscaled: list[dict[str, float]] = []
    task_losses = trainer._task_losses
    trainer._task_losses = lambda *a: (lambda out: unscaled.append({n: float(v.detach()) for n, v in out.items()}) or out)(
        task_losses(*a))
    trainer.run()
    assert trainer.validator.every == 1  # protect without train.eval_every: every steps // 8 (at least 1) steps
    assert trainer.task_scale["captioning"] == 8.0 and trainer.task_scale["recognition"] == 1.0
    # step 1 ran before any validation; from step 2 on captioning's loss reaches the balancer boosted
    assert seen[0]["captioning"] == pytest.approx(unscaled[0]["captioning"])
    assert seen[1]["captioning"] == pytest.approx(2 * unscaled[1]["captioning"])
    assert seen[2]["captioning"] == pytest.approx(4 * unscaled[2]["captioning"])
    assert seen[2]["recognition"] == pytest.approx(unscaled[2]["recognition"])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["protect/captioning"] for r in records if "protect/captioning" in r][:3] == [2.0, 4.0, 8.0]
    assert all(r["loss/captioning"] == pytest.approx(u["captioning"], rel=1e-5)  # logged losses stay unscaled
               for r, u in zip([r for r in records if "loss/captioning" in r], unscaled))
    summary = json.loads((run / "validation.json").read_text())["protection"]
    assert summary["against"] == "single-task baselines" and summary["tasks"]["captioning"]["behind"]
    resumed = make_trainer(resolve_config({}, [*overrides[:-1], "train.steps=7"]), resume="latest")
    assert resumed.validator.protection.factors["captioning"] == 8.0
