"""Validation during training: drift alarm, best-checkpoint selection, early stopping, resume, FLOP savings."""
import json
from pathlib import Path

import pytest
import torch

from mmtl.config import resolve_config
from mmtl.errors import ConfigError, MMTLError
from mmtl.evaluation.evaluate import EvalResult
from mmtl.checkpoint import resolve_checkpoint
from mmtl.training.run import make_trainer, train
from mmtl.training.validation import DriftDetector, Scored, Selector, Validator, relative_change
from tests.conftest import micro_overrides

PRIMARY = {"a": "acc", "b": "acc", "c": "acc"}


def test_drift_detector_on_a_scripted_sequence() -> None:
    drift = DriftDetector(patience=2)
    assert drift.update({"a": 0.5, "b": 0.5, "c": 0.5}) == []  # first validation: no change to judge
    assert drift.update({"a": 0.4, "b": 0.6, "c": 0.6}) == []  # a worse, others better: streak 1
    assert drift.update({"a": 0.3, "b": 0.7, "c": 0.65}) == ["a"]  # streak 2 = patience: alarm
    assert drift.update({"a": 0.2, "b": 0.8, "c": 0.7}) == ["a"]  # still drifting: still in alarm
    # a worse again, but the others' mean change is negative (b -25%, c +1%): not drift, streak resets
    assert drift.update({"a": 0.1, "b": 0.6, "c": 0.707}) == [] and drift.streak["a"] == 0
    # everyone worse: nobody drifts
    assert drift.update({"a": 0.05, "b": 0.5, "c": 0.6}) == []
    assert DriftDetector(patience=0).update({"a": 1.0}) == []
    single = DriftDetector(patience=1)
    single.update({"a": 1.0})
    assert single.update({"a": 0.5}) == []  # one task: no others to improve
    restored = DriftDetector(patience=2)
    restored.load_state_dict(drift.state_dict())
    assert restored.state_dict() == drift.state_dict()
    assert relative_change(0.0, 0.2) == pytest.approx(0.2) and relative_change(0.5, 0.25) == pytest.approx(-0.5)


def _score(selector: Selector, step: int, a: float, b: float, loss: float = 1.0) -> Scored:
    return selector.score(step, {"a": {"acc": a}, "b": {"acc": b}}, {"a": loss, "b": 0.0}, PRIMARY, {})


def test_selection_prefers_no_regression_then_delta_m_and_counts_patience() -> None:
    selector = Selector("delta_m", tolerance=0.05, min_improvement=0.0, baseline={"a": {"acc": 0.5}, "b": {"acc": 0.5}})
    first = _score(selector, 1, 0.8, 0.4)  # a +60%, b -20% (regressed): Δm +20%
    assert first.delta_m == pytest.approx(0.2) and first.regressed == ["b"]
    assert selector.update(first)  # none qualifies yet: the unqualified one is best
    second = _score(selector, 2, 0.51, 0.5)  # Δm +1%, nothing regressed: beats the higher but unqualified Δm
    assert selector.update(second) and selector.best_step == 2
    assert selector.update(_score(selector, 3, 0.6, 0.49)) and selector.best_step == 3  # b -2% is within tolerance
    assert not selector.update(_score(selector, 4, 0.55, 0.5)) and selector.stale == 1
    assert not selector.update(_score(selector, 5, 1.0, 0.1)) and selector.stale == 2  # huge Δm, b regressed
    assert selector.best_step == 3 and selector.best["delta_m"] == pytest.approx(0.09)

    by_loss = Selector("loss", 0.05, 0.0, {"a": {"acc": 0.5}, "b": {"acc": 0.5}})
    assert by_loss.update(_score(by_loss, 1, 0.5, 0.5, loss=2.0))
    assert by_loss.update(_score(by_loss, 2, 0.4, 0.5, loss=1.0)) is False  # lower loss but a regressed
    assert by_loss.update(_score(by_loss, 3, 0.5, 0.5, loss=1.5)) and by_loss.best_step == 3

    last = Selector("last", 0.05, 0.0, {"a": {"acc": 0.5}, "b": {"acc": 0.5}})
    assert last.update(_score(last, 1, 0.6, 0.5)) and last.update(_score(last, 2, 0.5, 0.5))
    assert last.best_step == 2 and last.stale == 1  # the latest is kept; early stopping still watches Δm


def test_without_baselines_the_reference_is_each_metrics_first_nonzero_value() -> None:
    selector = Selector("delta_m", 0.0, 0.0)
    zero = selector.score(1, {"a": {"acc": 0.0}, "b": {"acc": 0.0}}, {}, PRIMARY, {})
    assert zero.delta_m is None and zero.score is None  # nothing comparable yet
    assert selector.score(2, {"a": {"acc": 0.4}, "b": {"acc": 0.0}}, {}, PRIMARY, {}).delta_m == 0.0
    third = selector.score(3, {"a": {"acc": 0.6}, "b": {"acc": 0.2}}, {}, PRIMARY, {})
    assert third.delta_m == pytest.approx((0.5 + 0.0) / 2)  # a vs 0.4; b's reference is now 0.2
    assert selector.reference == {"a": {"acc": 0.4}, "b": {"acc": 0.2}}


def test_validation_keys_are_checked(micro_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validation.select"):
        resolve_config({}, ["validation.select=best"])
    with pytest.raises(ConfigError, match="train.eval_every"):
        resolve_config({}, ["train.eval_every=-1"])
    old = tmp_path / "baselines.json"  # a file that has only test-split metrics
    old.write_text(json.dumps({"split": "test", "tasks": {"recognition": {"metrics": {"f1_micro": 0.5},
                                                                            "primary_metric": "f1_micro"}}}))
    config = resolve_config({}, micro_overrides(micro_data, tmp_path / "r") + ["train.eval_every=1",
                                                                                f"validation.baselines={old}"])
    with pytest.raises(MMTLError, match="no metrics on split 'val'"):
        Validator(config, tmp_path / "r")


@pytest.fixture
def no_run_plots(monkeypatch) -> None:
    """The loss and monitor plots are tested elsewhere; drawing them would double these tests' time."""
    import mmtl.training.logging as run_logs

    monkeypatch.setattr(run_logs, "plot_losses", lambda *a, **k: [])  # where finish_run looks them up
    monkeypatch.setattr(run_logs, "plot_task_monitor", lambda *a, **k: [])


def _scripted_evaluate(sequence: list[dict[str, float]]):
    """An evaluate() stand-in returning the next scripted primary metrics (the Trainer is real)."""
    calls = iter(sequence)

    def evaluate(components, config, device, split=None, **kwargs):
        values = next(calls)
        return EvalResult(split, 16, {t: {"m": v} for t, v in values.items()}, {}, {t: "m" for t in values},
                          losses={t: 1.0 - v for t, v in values.items()})
    return evaluate


def test_drift_warning_and_early_stop_in_a_run_then_resume(micro_data: Path, tmp_path: Path, monkeypatch,
                                                           caplog, one_thread, no_run_plots) -> None:
    import mmtl.training.validation as evaluation  # where validation looks evaluate and plot_validation up

    run_logging = evaluation

    run = tmp_path / "run"
    scripted = [  # recognition worsens while the others improve; Δm peaks at the 2nd validation
        {"recognition": 0.5, "captioning": 0.2, "summarization": 0.2},
        {"recognition": 0.6, "captioning": 0.3, "summarization": 0.3},
        {"recognition": 0.55, "captioning": 0.305, "summarization": 0.305},  # Δm 0.383 < 0.4
        {"recognition": 0.5, "captioning": 0.31, "summarization": 0.31},  # Δm 0.367: 2nd without improvement
    ]
    monkeypatch.setattr(evaluation, "evaluate", _scripted_evaluate(scripted))
    overrides = micro_overrides(micro_data, run, steps=8) + [
        "train.eval_every=1", "validation.drift_patience=2", "validation.early_stop_patience=2",
        "validation.tolerance=0.5", "train.checkpoint_every=0"]
    with caplog.at_level("WARNING"):
        result = train(resolve_config({}, overrides))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    warnings = [r for r in records if "warning" in r]
    assert [(r["step"], r["warning_kind"]) for r in warnings] == [(4, "drift"), (4, "early_stop")]
    assert warnings[0]["task"] == "recognition" and "recognition" in caplog.text and "early stop at step 4" in caplog.text
    val = [r for r in records if "val/delta_m" in r]
    assert [r["step"] for r in val] == [1, 2, 3, 4] and val[1]["val/best_step"] == 2
    assert result.checkpoint.name == "step-00000004"  # ended cleanly at the early stop, saved
    summary = json.loads((run / "validation.json").read_text())
    assert summary["best_step"] == 2 and "has not improved for 2 validations" in summary["stop_reason"]
    assert json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["step"] == 2
    monkeypatch.setattr(run_logging, "plot_validation", lambda *a, **k: None)  # drawn in the next test

    # resume: history, reference and counters come back; training goes on to the new budget
    monkeypatch.setattr(evaluation, "evaluate", _scripted_evaluate(
        [{"recognition": 0.7, "captioning": 0.4, "summarization": 0.4}]))
    resumed = make_trainer(resolve_config({}, [*overrides[:-1], "train.steps=5"]), resume="latest")
    assert [h["step"] for h in resumed.validator.history] == [1, 2, 3, 4]
    assert resumed.validator.selector.best_step == 2 and resumed.validator.selector.stale == 2
    assert resumed.validator.drift.streak["recognition"] == 2
    resumed.run()
    assert resumed.step == 5 and resumed.validator.selector.best_step == 5


def test_validation_does_not_change_training_and_keeps_a_loadable_best(micro_data: Path, tmp_path: Path, capsys,
                                                                       one_thread, no_run_plots) -> None:
    from safetensors.torch import load_file

    from mmtl.cli import main

    result = train(resolve_config({}, micro_overrides(micro_data, tmp_path / "plain", steps=3)))
    plain = result.components.model.state_dict()
    assert main(["train", *micro_overrides(micro_data, tmp_path / "val", steps=3), "train.eval_every=2",
                 "validation.max_samples=8"]) == 0
    assert "best checkpoint (validation.select=delta_m)" in capsys.readouterr().out
    validated = load_file(str(resolve_checkpoint(tmp_path / "val") / "model.safetensors"))
    assert all(torch.equal(plain[k], validated[k]) for k in validated)  # validation leaves the RNG and mode alone
    records = [json.loads(line) for line in (tmp_path / "val" / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [2, 3]  # every eval_every steps and the last
    for task in ("recognition", "captioning", "summarization"):
        assert f"val/{task}/loss" in val[0] and any(k.startswith(f"val/{task}/") and k != f"val/{task}/loss" for k in val[0])
    best = tmp_path / "val" / "checkpoints" / "best"
    step = json.loads((best / "meta.json").read_text())["step"]
    assert step == json.loads((tmp_path / "val" / "validation.json").read_text())["best_step"]
    assert (tmp_path / "val" / "val_metrics.png").stat().st_size > 1000
    from mmtl.inference import Predictor

    assert Predictor.from_pretrained(best).model is not None and resolve_checkpoint(best) == best


def test_drift_alarm_shows_in_the_progress_bar(tmp_path: Path) -> None:
    from tqdm import tqdm

    config = resolve_config({}, ["validation.drift_patience=1"])
    validator = Validator(config, tmp_path)
    validator.drift.update({"a": 1.0, "b": 1.0})
    validator.drift.update({"a": 0.5, "b": 2.0})
    with (tmp_path / "bar.txt").open("w") as sink, tqdm(total=1, file=sink) as bar:
        bar.set_postfix({"a": "1.0"})
        validator.after_step(type("T", (), {"step": 1})(), None, bar)  # validation is off: only the postfix
        assert bar.postfix.endswith("DRIFT=a")


def test_flop_savings_arithmetic_on_a_micro_model(micro_data: Path, tmp_path: Path) -> None:
    from mmtl.builder import components_from_data
    from mmtl.evaluation.savings import forward_flops_per_sample, savings
    from mmtl.evaluation.info import example_batch

    tasks = ["recognition", "captioning", "summarization"]
    config = resolve_config({}, micro_overrides(micro_data, tmp_path / "r"))
    multi = components_from_data(config)
    joint = forward_flops_per_sample(multi, config)
    separate = {}
    for task in tasks:
        single = resolve_config({}, micro_overrides(micro_data, tmp_path / "r") + [f"tasks=[{task}]"])
        separate[task] = forward_flops_per_sample(components_from_data(single), single)
    # hard sharing: a single-task model is the multi-task model's path for that task, so the
    # separate models cost exactly the multi-task model's per-task forwards, counted one at a time
    per_task = multi.model.forward_flops(example_batch(multi, config))
    assert separate == per_task
    # one forward shares the image encoding (all tasks) and the image-only fusion (recognition, captioning)
    assert max(separate.values()) < joint < sum(separate.values())
    report = savings(joint, separate)
    assert report["ratio"] == pytest.approx(sum(separate.values()) / joint)
    assert report["saved"] == pytest.approx(1 - joint / sum(separate.values()))
    assert savings(100, {"a": 60, "b": 90}) | {"per_task": None} == {
        "multi_task": 100, "separate_models": 150, "per_task": None, "ratio": 1.5, "saved": pytest.approx(1 / 3)}
