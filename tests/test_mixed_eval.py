"""A run on several sources (`data.sources`) through the CLI: baselines (resumable), per-source eval and
validation, label modes per source, and `model info` naming where the classes come from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmtl.cli import main
from tests.conftest import micro_overrides

SPLITS = ("train", "val", "test")
COLOURS = {"crimson": (200, 20, 30), "teal": (20, 160, 150)}


def write_image_folder(root: Path, per_class: int) -> Path:
    """ROOT/<class>/<n>.png: plain colour images, one folder per class."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = tuple(max(0, c - 7 * i) for c in colour)
            Image.new("RGB", (40, 32), shade).save(root / name / f"{i}.png")
    return root


def write_documents(path: Path, count: int, offset: int) -> Path:
    words = ["river", "stone", "maple", "cloud", "lamp", "orbit"]
    with path.open("w") as out:
        for i in range(count):
            topic = words[(i + offset) % len(words)]
            out.write(json.dumps({"document": f"the {topic} report . it covers the {topic} in detail .",
                                  "summaries": [f"the {topic} report"]}) + "\n")
    return path


@pytest.fixture(scope="module")
def mixed_sources(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The micro shapes data, a single-label image folder and a JSONL document set, each with train/val/test."""
    root = tmp_path_factory.mktemp("mixed")
    folder, docs = root / "folder_shards", root / "docs_shards"
    for index, split in enumerate(SPLITS):
        images = write_image_folder(root / f"images_{split}", 12 if split == "train" else 4)
        assert main(["data", "convert", "--format", "imagefolder", "--root", str(images), "--out", str(folder),
                     "--split", split, "--no-progress"]) == 0
        rows = write_documents(root / f"docs_{split}.jsonl", 24 if split == "train" else 6, index)
        assert main(["data", "convert", "--format", "jsonl", "--input", str(rows), "--out", str(docs),
                     "--split", split, "--no-progress"]) == 0
    return {"shapes": micro_data, "folder": folder, "docs": docs}


def mixed_config(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"data": {"sources": sources, "mixing": "natural"}}))
    return path


def good_sources(paths: dict[str, Path]) -> list[dict]:
    """Recognition from the single-label folder only; the shapes feed captioning and summarization."""
    return [{"path": str(paths["shapes"]), "tasks": ["captioning", "summarization"]},
            {"path": str(paths["folder"]), "tasks": ["recognition"]},
            {"path": str(paths["docs"]), "tasks": ["summarization"]}]


def test_sources_of_both_label_modes_feeding_recognition_are_refused(mixed_sources, tmp_path: Path, capsys) -> None:
    config = mixed_config(tmp_path / "bad.yaml", [{"path": str(mixed_sources["shapes"])},
                                                  {"path": str(mixed_sources["folder"])}])
    assert main(["train", "--config", str(config), *micro_overrides(mixed_sources["shapes"], tmp_path / "r", 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "mix label modes" in err
    assert f"single-label: {mixed_sources['folder']}" in err and f"multi-label: {mixed_sources['shapes']}" in err


def test_model_info_names_the_sources_of_the_classes(mixed_sources, tmp_path: Path, capsys) -> None:
    config = mixed_config(tmp_path / "mixed.yaml", good_sources(mixed_sources))
    assert main(["model", "info", "--config", str(config), *micro_overrides(mixed_sources["shapes"], tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"2 classes (single-label) from {mixed_sources['folder']};" in out  # not the shapes' classes


def test_mixed_baselines_train_eval_and_validation_per_source(mixed_sources, tmp_path: Path, capsys) -> None:
    config = mixed_config(tmp_path / "mixed.yaml", good_sources(mixed_sources))
    run, base = tmp_path / "run", tmp_path / "base"
    overrides = micro_overrides(mixed_sources["shapes"], run, steps=2)
    argv = ["baselines", "--config", str(config), *overrides, "--out", str(base)]
    assert main(argv) == 0
    record = json.loads((base / "baselines.json").read_text())
    assert set(record["tasks"]) == {"recognition", "captioning", "summarization"}
    summarization = record["tasks"]["summarization"]
    assert set(summarization["source_metrics"]) == {str(mixed_sources["shapes"]), str(mixed_sources["docs"])}
    assert set(summarization["split_source_metrics"]) == {"test", "val"}
    assert list(record["tasks"]["recognition"]["source_metrics"]) == [str(mixed_sources["folder"])]
    assert record["tasks"]["recognition"]["primary_metric"] == "top1"
    assert record["tasks"]["captioning"]["vocabulary"] < record["tasks"]["summarization"]["vocabulary"]
    single = yaml.safe_load((base / "captioning" / "config.yaml").read_text())
    assert [s["tasks"] for s in single["data"]["sources"]] == [["captioning"]]  # only the sources feeding it

    # a second run refuses to mix into the first; --resume skips the finished tasks
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    (base / "captioning" / "baseline.json").unlink()
    recognition_log = (base / "recognition" / "log.jsonl").read_text()
    assert main(argv + ["--resume"]) == 0
    assert (base / "recognition" / "log.jsonl").read_text() == recognition_log  # not retrained
    assert json.loads((base / "baselines.json").read_text())["tasks"]["recognition"] == record["tasks"]["recognition"]
    capsys.readouterr()
    changed = ["baselines", "--config", str(config), *overrides, "train.steps=3", "--out", str(base), "--resume"]
    assert main(changed) == 2  # a finished baseline is not reused for other settings
    err = capsys.readouterr().err
    assert "trained with other settings (steps differ)" in err and err.count("\n") == 1

    assert main(["train", "--config", str(config), *overrides, "train.eval_every=2",
                 f"validation.baselines={base / 'baselines.json'}"]) == 0
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    validation = next(r for r in logged if "val/delta_m" in r)
    assert f"val_source/{mixed_sources['docs']}/summarization/rougeL" in validation
    assert f"val_source/{mixed_sources['shapes']}/summarization/rougeL" in validation

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"),
                 "--baselines", str(base / "baselines.json"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["sources"]) == {str(p) for p in mixed_sources.values()}
    docs = result["sources"][str(mixed_sources["docs"])]
    assert set(docs["model"]) == {"summarization"} and docs["samples"] == 6
    assert result["samples"] == 16 + 8 + 6
    assert set(result["model"]["recognition"]) == {"top1", "top5"}
    assert "top5" in printed and "all sources" in printed and f"source {mixed_sources['docs']}: Δm" in printed
    delta = result["delta"]
    assert set(delta["verdicts"]) == {"recognition", "captioning", "summarization"}
    assert set(delta["sources"]) == {str(p) for p in mixed_sources.values()}
    assert delta["parameters"]["multi_task"] == json.loads((run / "checkpoints" / "LATEST").parent.joinpath(
        (run / "checkpoints" / "LATEST").read_text().strip(), "meta.json").read_text())["parameters"]["total"]
