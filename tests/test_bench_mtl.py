"""tools/bench_mtl.py end to end on its smallest setting with a micro model: baselines, a recipe, the report."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import load_tool


def test_bench_mtl_compares_each_task_with_its_single_task_model_and_ends_with_a_json_line(
        tmp_path: Path, capsys, one_thread) -> None:
    bench = load_tool("bench_mtl")
    out = tmp_path / "bench"
    overrides = ["model.preset=micro", "train.steps=2", "data.batch_size=8", "eval.max_samples=16",
                 "train.warmup_steps=1", "model.decoder.max_length=48", "eval.generation.max_length=8"]
    argv = ["--settings", "shapes-hard-10", "--seeds", "0", "--out", str(out), "--recipes", "shipped=",
            "captioning2=balancer.name=fixed;balancer.weights.captioning=2", "--", *overrides]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary["summary"]) == {"shapes-hard-10/shipped", "shapes-hard-10/captioning2"}
    report = json.loads((out / "report.json").read_text())["settings"]["shapes-hard-10"]
    row = report["recipes"]["captioning2"]
    assert set(row["tasks"]) == {"recognition", "captioning", "summarization"}
    assert 0 < row["parameter_share"] < 0.7 and row["train_seconds"] > 0
    data = json.loads((out / "data" / "shapes-hard-300" / "dataset.json").read_text())
    assert data["splits"]["train"]["samples"] == 300  # 10% of the quickstart's 3,000 training scenes
    config = (out / "shapes-hard-10" / "seed-0" / "captioning2" / "config.yaml").read_text()
    assert "captioning: 2.0" in config  # the recipe's overrides reached its run
    assert any("| captioning | bleu4 |" in line for line in lines)
    # a second call finds every step done and only reports
    assert bench.main(argv) == 0


def test_a_recipe_whose_override_is_not_key_value_is_refused_with_one_line(capsys) -> None:
    """`--recipes a= train.lr=0.001` used to take `train.lr=0.001` as a recipe named `train.lr` whose
    override `0.001` was passed to mmtl: the run-wide setting silently reached no run."""
    bench = load_tool("bench_mtl")
    assert bench.parse_recipes(["shipped=", "cap2=balancer.weights.captioning=2;seed=1"]) == {
        "shipped": [], "cap2": ["balancer.weights.captioning=2", "seed=1"]}
    try:
        bench.main(["--settings", "quickstart", "--out", "/nonexistent/never-written", "--recipes", "shipped=",
                    "train.lr=0.001"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("a recipe override without '=' was accepted")
    err = capsys.readouterr().err
    assert "train.lr=0.001" in err and "KEY=VALUE" in err


def test_the_report_says_when_the_single_task_models_spread_more_over_seeds_than_the_tolerance() -> None:
    """A ±1% per-seed verdict means little when the single-task models themselves differ by 5% from one
    seed to the next: the report shows each task's single-task spread and names the tasks above tolerance."""
    bench = load_tool("bench_mtl")

    def record(caption_st: float, caption_mt: float) -> dict:
        verdicts = {"recognition": {"metric": "f1_micro", "model": 1.0, "baseline": 1.0, "change": 0.0, "ok": True},
                    "captioning": {"metric": "bleu4", "model": caption_mt, "baseline": caption_st,
                                   "change": caption_mt / caption_st - 1, "ok": caption_mt / caption_st - 1 >= -0.01}}
        return {"delta": {"verdicts": verdicts, "delta_m": 0.0, "regressed": [], "per_task": {}}}

    records = {0: record(80.0, 82.0), 1: record(80.0, 81.0), 2: record(88.0, 81.0)}
    row = bench.aggregate(records, {}, {}, tolerance=0.01)
    assert row["tasks"]["recognition"]["single_task_spread"] == 0.0
    spread = row["tasks"]["captioning"]["single_task_spread"]
    assert abs(spread - 4.6188 / 82.6667) < 1e-3  # sample std / mean of 80, 80, 88
    assert row["noisy_tasks"] == ["captioning"]
    text = bench.format_report("s", "d", "shipped", row)
    assert "single-task spread over seeds" in text and "captioning 5.6%" in text
    one_seed = bench.aggregate({0: record(80.0, 82.0)}, {}, {}, tolerance=0.01)
    assert one_seed["tasks"]["captioning"]["single_task_spread"] is None and one_seed["noisy_tasks"] == []


def test_the_real_inet_setting_mixes_three_sources_one_per_task(tmp_path: Path, monkeypatch) -> None:
    """`real-inet`: ImageNet super-classes feed recognition only (held-out images as val and test), COCO
    captioning only, SciTLDR summarization only: no source feeds a task it was not meant for."""
    from PIL import Image
    bench = load_tool("bench_mtl")
    sample = tmp_path / "shared" / "imagenet_sample"
    sample.mkdir(parents=True)
    for index in range(1000):  # imagenet_sample's layout: one image per class, sorted by WordNet id
        Image.new("RGB", (8, 8), (index % 256, 0, 0)).save(sample / f"n{index:08d}_c{index}.JPEG")
    monkeypatch.setattr(bench, "SHARED_DATA", tmp_path / "shared")
    coco, tldr = tmp_path / "coco", tmp_path / "tldr"
    monkeypatch.setattr(bench, "_coco_and_tldr", lambda data_dir, runner: (coco, tldr))
    converted: list[list[str]] = []
    monkeypatch.setattr(bench, "_convert", lambda runner, log, *argv: converted.append(list(argv)))
    config, overrides = bench.prepare_real_inet(tmp_path / "data", runner=None)
    written = json.loads(Path(config).read_text())
    sources = written["data"]["sources"]
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / "mixed_real.yaml").read_text())
    assert written["data"]["mixing_temperature"] == shipped["data"]["mixing_temperature"]  # mixed as shipped
    assert written["model"]["decoder"] == shipped["model"]["decoder"] and written["model"]["preset"] == "tiny"
    assert [(Path(s["path"]).name, s["tasks"]) for s in sources] == [
        ("real-inet", ["recognition"]), ("coco", ["captioning"]), ("tldr", ["summarization"])]
    folders = tmp_path / "data" / "inet-folders"
    assert [(argv[argv.index("--split") + 1], Path(argv[argv.index("--root") + 1]).name) for argv in converted] == [
        ("train", "train"), ("val", "test"), ("test", "test")]
    classes = {p.name for p in (folders / "train").iterdir()}
    assert len(classes) == 9 and classes == {p.name for p in (folders / "test").iterdir()}
    assert overrides == []


def test_a_real_settings_config_is_replaced_in_one_rename_and_left_alone_when_unchanged(tmp_path: Path) -> None:
    """Two bench_mtl processes on one real setting used to rewrite its config in place (truncate, then
    write), so a training the other had just started could read an empty file."""
    bench = load_tool("bench_mtl")
    sources = [{"path": str(tmp_path / "coco"), "tasks": ["recognition", "captioning"]}]
    path = Path(bench._real_config(tmp_path, "real", sources))
    first = path.stat().st_ino
    assert yaml.safe_load(path.read_text())["data"]["sources"] == sources
    assert Path(bench._real_config(tmp_path, "real", sources)).stat().st_ino == first  # unchanged: not rewritten
    moved = [{"path": str(tmp_path / "elsewhere"), "tasks": ["recognition", "captioning"]}]
    bench._real_config(tmp_path, "real", moved)
    assert path.stat().st_ino != first and yaml.safe_load(path.read_text())["data"]["sources"] == moved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.yaml"]  # no temporary file left
