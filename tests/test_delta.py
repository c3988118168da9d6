"""Δm arithmetic against a hand-computed case, and `mmtl baselines` + `mmtl eval --baselines` as a user runs them."""
import json
from pathlib import Path

import pytest
import torch

from mmtl.cli import main
from mmtl.evaluation.delta import MetricRoles, delta_m, format_delta
from mmtl.registry import TASKS
from tests.conftest import load_tool, micro_overrides


def test_delta_m_matches_a_hand_computed_case() -> None:
    model = {"a": {"acc": 0.8, "f1": 0.6, "new": 1.0}, "b": {"err": 0.2}, "c": {"bleu": 0.0}}
    base = {"a": {"acc": 0.5, "f1": 0.6}, "b": {"err": 0.25}, "c": {"bleu": 0.0}}
    report = delta_m(model, base, {"a": "acc", "b": "err"}, {"b": ["err"]}, tolerance=0.0)
    # a: acc +60%, f1 0% -> +30%; b: error 0.25 -> 0.2 is better: -(0.2-0.25)/0.25 = +20%; c: baseline 0, left out
    assert report.per_task == pytest.approx({"a": 0.3, "b": 0.2})
    assert report.delta_m == pytest.approx(0.25)
    assert report.zero_baseline == ["c/bleu"] and report.no_regression
    text = format_delta(report)
    assert "Δm = +25.0% over 2 task(s)" in text
    # the zero-baseline metric is reported with both values, not silently dropped
    row = next(line for line in text.splitlines() if line.startswith("c ") and "bleu" in line)
    assert "n/a (baseline 0; difference +0.000, not in Δm)" in row


def test_a_collapsed_task_makes_delta_m_negative_and_fails_its_verdict() -> None:
    # the case of issue 14: recognition's top-5 doubled, captioning collapsed by 87%
    base = {"recognition": {"top1": 0.10, "top5": 0.20}, "captioning": {"bleu4": 10.0, "rougeL": 30.0},
            "summarization": {"rougeL": 20.0}}
    model = {"recognition": {"top1": 0.11, "top5": 0.44}, "captioning": {"bleu4": 1.3, "rougeL": 3.9},
             "summarization": {"rougeL": 20.4}}
    primary = {"recognition": "top1", "captioning": "bleu4", "summarization": "rougeL"}
    report = delta_m(model, base, primary, tolerance=0.02)
    # recognition (+10% + 120%)/2 = +65%; captioning (-87% - 87%)/2 = -87%; summarization +2%
    assert report.per_task == pytest.approx({"recognition": 0.65, "captioning": -0.87, "summarization": 0.02})
    assert report.delta_m == pytest.approx((0.65 - 0.87 + 0.02) / 3) and report.delta_m < 0
    assert report.regressed == ["captioning"] and not report.no_regression
    text = format_delta(report)
    assert "REGRESSED beyond the tolerance (2.0%): captioning" in text
    verdict_row = next(line for line in text.splitlines() if line.startswith("captioning") and "REGRESSED" in line)
    assert "bleu4" in verdict_row and "-87.0%" in verdict_row and "(fell more than 2.0%)" in verdict_row
    assert text.count("Δm = mean over tasks") == 1  # the definition, printed once


def test_zero_baseline_primary_metric_is_reported_and_judged_absolutely() -> None:
    base = {"recognition": {"top1": 0.0, "top5": 0.5}, "captioning": {"bleu4": 0.0}}
    model = {"recognition": {"top1": 0.2, "top5": 0.25}, "captioning": {"bleu4": 0.0}, "summarization": {"rougeL": 1}}
    report = delta_m(model, base, {"recognition": "top1", "captioning": "bleu4", "summarization": "rougeL"})
    assert report.zero_baseline == ["recognition/top1", "captioning/bleu4"]
    assert report.per_task == pytest.approx({"recognition": -0.5})  # only top5 has a relative change
    assert report.verdicts["recognition"] == {"metric": "top1", "model": 0.2, "baseline": 0.0, "change": None,
                                              "ok": True}
    assert report.verdicts["captioning"]["ok"]  # 0 against 0 did not fall
    assert report.missing_tasks == ["summarization"]
    text = format_delta(report)
    assert "NO SINGLE-TASK MODEL" in text and "Δm leaves out summarization" in text
    # a baseline that is floating-point residue (CIDEr-D of degenerate captions) counts as 0, instead of
    # turning 0.13 into a change of +1.8 million percent (seen on real data)
    residue = delta_m({"c": {"cider": 0.126, "bleu4": 0.1}}, {"c": {"cider": 6.8e-08, "bleu4": 0.1}}, {"c": "bleu4"})
    assert residue.zero_baseline == ["c/cider"] and residue.delta_m == 0.0
    lower = delta_m({"a": {"err": 0.1, "acc": 0.5}}, {"a": {"err": 0.0, "acc": 0.5}}, {"a": "err"}, {"a": ["err"]})
    assert not lower.verdicts["a"]["ok"]  # an error above a baseline of 0 is a regression
    assert "REGRESSED (below a baseline of 0)" in format_delta(lower)


def test_non_regression_verdict_uses_the_tolerance() -> None:
    model, base = {"a": {"f1": 0.57}, "b": {"f1": 0.9}}, {"a": {"f1": 0.6}, "b": {"f1": 0.5}}
    strict = delta_m(model, base, {"a": "f1", "b": "f1"}, tolerance=0.02)
    assert strict.delta_m == pytest.approx((-0.05 + 0.8) / 2)
    assert not strict.verdicts["a"]["ok"] and strict.verdicts["b"]["ok"] and not strict.no_regression
    assert "REGRESSED" in format_delta(strict)
    assert delta_m(model, base, {"a": "f1", "b": "f1"}, tolerance=0.06).no_regression
    with pytest.raises(ValueError):
        delta_m({"a": {"f1": 1.0}}, {"b": {"f1": 1.0}}, {})


def test_baselines_then_eval_reports_delta_m(micro_data: Path, tmp_path: Path, capsys) -> None:
    base_dir, run = tmp_path / "base", tmp_path / "run"
    overrides = micro_overrides(micro_data, run, steps=2)
    assert main(["baselines", *overrides, "--out", str(base_dir)]) == 0
    record = json.loads((base_dir / "baselines.json").read_text())
    assert set(record["tasks"]) == {"recognition", "captioning", "summarization"}
    assert record["steps"] == 2 and record["split"] == "test"
    assert (base_dir / "captioning" / "checkpoints" / "LATEST").is_file()
    meta = json.loads(next((base_dir / "recognition" / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["tasks"] == ["recognition"]
    for entry in record["tasks"].values():  # also on the val split (for validation during training), and FLOPs
        assert set(entry["split_metrics"]) == {"test", "val"} and entry["split_metrics"]["test"] == entry["metrics"]
        assert entry["flops_per_sample"] > 0

    assert main(["train", *overrides]) == 0
    capsys.readouterr()
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"),
                 "--baselines", str(base_dir / "baselines.json"),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    exact = tmp_path / "exact.json"  # exactly N samples scored, not a whole batch of 64; examples printed
    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"), "--max-samples", "5",
                 "--examples", "2", "--output", str(exact)]) == 0
    shown = capsys.readouterr().out
    assert json.loads(exact.read_text())["samples"] == 5 and shown.count("reference:") == 2 * 3
    assert "Δm = " in printed and "single-task" in printed and "parameters:" in printed
    assert "forward FLOPs per sample:" in printed
    result = json.loads(out.read_text())
    roles = MetricRoles.of(TASKS.get(t) for t in record["tasks"])
    expected = delta_m(result["model"], {t: e["metrics"] for t, e in record["tasks"].items()},
                       result["primary_metric"], trivial=result["baseline"], roles=roles).delta_m
    assert result["delta"]["delta_m"] == pytest.approx(expected)
    assert set(result["delta"]["verdicts"]) == {"recognition", "captioning", "summarization"}
    assert printed.count("Δm = mean over tasks") == 1
    for task, verdict in result["delta"]["verdicts"].items():
        metric = result["primary_metric"][task]
        base, trivial = record["tasks"][task]["metrics"][metric], result["baseline"][task][metric]
        if base <= trivial:  # a 2-step single-task model rarely beats its trivial baseline: not in Δm
            assert verdict["change"] is None and verdict["unlearned"] and "did not learn" in printed
        else:
            assert verdict["change"] == pytest.approx((result["model"][task][metric] - base) / base)
    parameters = result["delta"]["parameters"]
    assert parameters["separate_models"] > parameters["multi_task"] > 0 and "savings_note" not in result["delta"]
    flops = result["delta"]["flops"]  # one forward shares the image encoding and fusion passes across tasks
    assert flops["separate_models"] == sum(e["flops_per_sample"] for e in record["tasks"].values())
    assert flops["multi_task"] < flops["separate_models"]
    assert flops["ratio"] == pytest.approx(flops["separate_models"] / flops["multi_task"])
    # an older baselines file without stored FLOPs: counted from the single-task checkpoints it names
    from mmtl.evaluation.baselines import baseline_flops

    entry = dict(record["tasks"]["captioning"])
    stored = entry.pop("flops_per_sample")
    assert baseline_flops(entry) == stored


@pytest.mark.parametrize("argv, message", [
    (["baselines", "train.stpes=2"], "train.stpes"),
    (["baselines", "--config", "missing.yaml"], "config file not found"),
])
def test_baselines_bad_input_exits_2(argv: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_eval_with_a_missing_or_bad_baselines_file_exits_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": {"recognition": {"metrics": 3}}}')
    for path, message in ((tmp_path / "none.json", "baselines file not found"), (bad, "not a baselines file")):
        # the baselines are read before the checkpoint, so no trained run is needed to see the error
        assert main(["eval", "--checkpoint", str(tmp_path), "--baselines", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_affinity_grouping_prefers_tasks_that_help_each_other() -> None:
    from mmtl.balancing.affinity import partitions, recommend_groups

    assert len(list(partitions(["a", "b", "c", "d"]))) == 15  # Bell number B4
    tasks = ["a", "b", "c", "d"]
    z = torch.tensor([[1.0, 0.5, -0.4, -0.3], [0.6, 1.0, -0.2, -0.5], [-0.3, -0.6, 1.0, 0.4], [-0.2, -0.1, 0.3, 1.0]])
    assert sorted(map(sorted, recommend_groups(tasks, z))) == [["a", "b"], ["c", "d"]]
    assert recommend_groups(tasks, torch.full((4, 4), 0.2)) == [tasks]  # all help each other: one model
    assert len(recommend_groups(tasks, z, max_groups=1)) == 1


def test_analyze_affinity_cli(micro_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "aff"
    argv = ["analyze", "affinity", *micro_overrides(micro_data, tmp_path / "r", steps=1), "--every", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recommended grouping" in printed
    result = json.loads((out / "affinity.json").read_text())
    z = torch.tensor(result["affinity"])
    assert z.shape == (3, 3) and result["measurements"] == 1
    assert (z.diagonal() > 0).all()  # a small step on a task's own loss lowers that loss
    assert (out / "affinity.png").stat().st_size > 1000
    assert main(["analyze", "affinity", "--every", "0"]) == 2
    assert "--every must be >= 1" in capsys.readouterr().err


def test_balancer_table_summarises_seeds(tmp_path: Path) -> None:
    table = load_tool("balancer_table")
    assert table.parse_balancer("pcgrad@representation") == (
        "pcgrad@representation", ["balancer.name=pcgrad", "balancer.on=representation"])
    bases, results = {}, {}
    for seed, (acc, delta, ok) in enumerate([(0.5, 0.1, True), (0.7, 0.3, False)]):
        path = tmp_path / f"b{seed}.json"
        path.write_text(json.dumps({"split": "test", "tasks": {"a": {"metrics": {"acc": 0.4 + seed / 10}}}}))
        bases[seed] = path
        results[("equal", seed)] = {"primary_metric": {"a": "acc"}, "model": {"a": {"acc": acc}},
                                    "delta": {"delta_m": delta, "verdicts": {"a": {"ok": ok}}}}
    report = table.collect(["equal"], [0, 1], bases, results, ["mmtl train ..."])
    row = report["balancers"]["equal"]
    assert row["delta_m"]["mean"] == pytest.approx(0.2) and row["delta_m"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["metrics"]["a"]["acc"]["mean"] == pytest.approx(0.6) and row["regressed"] == {"a": 1}
    assert report["baselines"]["a"]["acc"]["mean"] == pytest.approx(0.45)
    text = table.markdown(report)
    assert "| equal | +20.00 ± 14.14 | 0.600 ± 0.141 | 1/2 | a 1/2 |" in text and "mmtl train ..." in text
    assert row["seeds_with_regression"] == 1


def test_balancer_table_end_to_end_with_the_tuned_row(micro_data: Path, tmp_path: Path, one_thread) -> None:
    table = load_tool("balancer_table")
    out = tmp_path / "table"
    overrides = [o for o in micro_overrides(micro_data, tmp_path, steps=2) if not o.startswith("output_dir=")]
    overrides.append("tasks=[recognition,captioning]")
    assert table.main(["--balancers", "equal", "--seeds", "0", "--out", str(out), "--device", "cpu",
                       "--tune-weights", "1,2", *overrides]) == 0
    report = json.loads((out / "table.json").read_text())
    tuned = report["balancers"]["tuned scalarisation"]
    assert tuned["weights"][0] in table.weight_grid(["recognition", "captioning"], [1, 2])
    chosen = json.loads((out / "seed-0" / "tuned" / "eval.json").read_text())
    assert len(chosen["validation"]) == 3 and chosen["split"] == "test"
    for candidate in (out / "seed-0" / "tuned").glob("w-*"):  # scored on the validation split
        assert json.loads((candidate / "eval-val.json").read_text())["split"] == "val"
    assert tuned["delta_m"]["values"] == [chosen["delta"]["delta_m"]]
    text = (out / "table.md").read_text()
    assert "| tuned scalarisation |" in text and "task weights chosen on the validation split" in text
    assert table.main(["--balancers", "equal", "--seeds", "0", "--out", str(out), "--device", "cpu",
                       "--tune-weights", "1,2", *overrides]) == 0
    assert json.loads((out / "table.json").read_text())["commands"] == []  # everything done: nothing ran again


def test_counting_error_metric_counts_against_the_model() -> None:
    """A counting model worse than its baseline on accuracy and on mean absolute error has a negative Δm."""
    counting = TASKS.get("counting")
    references = [1, 2, 3, 4]
    baseline = counting.score(counting, [1, 2, 3, 3], references)
    model = counting.score(counting, [1, 0, 0, 0], references)
    report = delta_m({"counting": model}, {"counting": baseline}, {"counting": "accuracy"},
                     {"counting": counting.lower_is_better})
    assert model["mae"] > baseline["mae"] and report.delta_m < 0


def test_a_reference_that_did_not_learn_stays_out_of_delta_m() -> None:
    # the single-task CIDEr 0.0003 is below the trivial baseline's 0.01: +1,233% against it means nothing
    model = {"captioning": {"cider": 0.004, "bleu4": 10.0}, "recognition": {"f1": 0.9}}
    base = {"captioning": {"cider": 0.0003, "bleu4": 10.0}, "recognition": {"f1": 0.9}}
    trivial = {"captioning": {"cider": 0.01, "bleu4": 2.0}, "recognition": {"f1": 0.2}}
    primary = {"captioning": "cider", "recognition": "f1"}
    report = delta_m(model, base, primary, tolerance=0.01, trivial=trivial)
    assert report.delta_m == pytest.approx(0.0) and report.unlearned == ["captioning/cider"]
    assert report.verdicts["captioning"]["unlearned"] and report.verdicts["captioning"]["change"] is None
    assert "did not beat its trivial baseline on captioning/cider" in format_delta(report)
    assert delta_m(model, base, primary).delta_m > 3  # without the trivial baselines: the absurd +308%
    lower = delta_m({"a": {"mae": 0.5}}, {"a": {"mae": 2.0}}, {"a": "mae"}, {"a": ["mae"]},
                    trivial={"a": {"mae": 1.5}})  # lower is better: a reference worse than trivial did not learn
    assert lower.unlearned == ["a/mae"] and lower.delta_m is None


def test_diagnostic_metrics_stay_out_and_a_collapse_is_a_verdict() -> None:
    from mmtl.tasks.metrics import diversity

    references = ["a red circle", "a blue square", "two green stars", "a small red square"]
    single = {"bleu4": 40.0, **diversity(references)}
    constant = {"bleu4": 40.0, **diversity(["a table ."] * 4)}  # no word repeats: repetition 0
    roles = MetricRoles.of([TASKS.get("captioning")])
    report = delta_m({"captioning": constant}, {"captioning": single}, {"captioning": "bleu4"}, roles=roles)
    assert report.delta_m == pytest.approx(0.0)  # repetition's "improvement" is not in Δm
    assert set(report.verdicts["captioning"]["collapsed"]) == {"unique_outputs", "distinct2"}
    assert report.collapsed == ["captioning"] and report.regressed == ["captioning"]
    assert "COLLAPSED" in format_delta(report)
    varied = delta_m({"captioning": single}, {"captioning": single}, {"captioning": "bleu4"}, roles=roles)
    assert varied.no_regression and not varied.collapsed


def test_balancer_table_runner_gives_in_process_runs_the_threads_it_was_asked_for(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # `--jobs 1 --threads 1` ran every training at the machine's default thread count, so benchmarks that
    # said "one thread" were not (and floating-point sums, hence metrics, depend on the thread count)
    table = load_tool("balancer_table")
    seen: list[int] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(torch.get_num_threads())
        return 0

    import mmtl.cli

    monkeypatch.setattr(mmtl.cli, "main", fake_main)
    before = torch.get_num_threads()
    table.Runner(jobs=1, threads=1)(["train"], tmp_path / "train.log")
    assert seen == [1]
    assert torch.get_num_threads() == before
