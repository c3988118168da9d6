"""A component is one module: a toy task reading a new annotation field and a toy data format, each
registered by importing its module (tests/toy_extensions/), reach the converters, ``--map``, shard scans and
the ``mmtl data convert`` flags without any other file naming them."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_pipelines.convert.formats import FORMATS
from data_pipelines.convert.write import ConvertOptions, convert_source
from data_pipelines.fieldmap import mappable_fields, parse_mapping
from data_pipelines.inspect import format_report, inspect_shards
from data_pipelines.shards import iter_annotations, read_dataset_info
from data_pipelines.shardsets import describe, shard_mapping, to_contract
from mmtl.cli import main
from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.evaluation.evaluate import evaluate
from mmtl.registry import TASKS
from mmtl.training.run import train
from tests.conftest import micro_overrides


def _imported(module: str, registry, key: str) -> Iterator[object]:
    """Import a toy module (which registers its component) and unregister it afterwards."""
    try:
        yield importlib.import_module(module)
    finally:
        if key in registry:
            registry.unregister(key)
        sys.modules.pop(module, None)


@pytest.fixture
def toy_task() -> Iterator[object]:
    yield from _imported("tests.toy_extensions.toy_task", TASKS, "rating")


@pytest.fixture
def toy_format() -> Iterator[object]:
    yield from _imported("tests.toy_extensions.toy_format", FORMATS, "pairs")


def test_a_field_no_task_reads_cannot_be_mapped() -> None:
    assert "stars" not in mappable_fields() and "review" not in mappable_fields()
    with pytest.raises(MMTLError, match="unknown field 'stars'; valid fields: image, key, labels"):
        parse_mapping(["stars=score"])


def test_a_new_tasks_field_can_be_mapped_and_is_read_as_its_kind(toy_task: object) -> None:
    assert "stars" in mappable_fields()
    assert parse_mapping(["stars=vote.score"]) == {"stars": ["vote.score"]}
    raw = {"__key__": "a", "json": json.dumps({"vote": {"score": "4"}, "stars": 1}).encode()}
    assert json.loads(to_contract(raw, {"stars": ["vote.score"]})["json"]) == {"stars": 4}  # text -> int
    kept = to_contract({"__key__": "b", "json": b'{"stars": 3, "other": 1}'}, {})
    assert json.loads(kept["json"]) == {"stars": 3}  # a contract field already in the json is kept


def test_a_new_tasks_field_flows_through_the_jsonl_converter(toy_task: object, tmp_path: Path) -> None:
    rows = [{"id": "a", "score": "4", "review": "fine"}, {"id": "b", "score": "three", "review": "bad"},
            {"id": "c", "score": 2.0, "review": "ok then"}, {"id": "d", "review": "no stars"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = ConvertOptions(out=tmp_path / "out", progress=False, shuffle=False)
    result = convert_source("jsonl", options, input=str(tmp_path / "rows.jsonl"), mapping=["stars=score", "key=id"])
    split = read_dataset_info(tmp_path / "out")["splits"]["train"]
    assert split["tasks"] == {"rating": 2}
    assert split["skipped"] == {"malformed_row": 1, "no_annotations": 1}  # "three" is no integer; d has no stars
    assert [(a["stars"], a["review"]) for a in iter_annotations(tmp_path / "out", "train")] == [(4, "fine"),
                                                                                               (2, "ok then")]
    assert result.stats.samples == 2


def test_a_new_tasks_fields_are_counted_by_the_shard_scan_and_inspect(toy_task: object, tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    with wds.ShardWriter(str(tmp_path / "shards" / "%05d.tar"), maxcount=10, verbose=0) as sink:
        for i, score in enumerate(["5", "x", "2", ""]):
            meta = {"score": score, "review": "a very good cat", "caption": "a cat"}
            sink.write({"__key__": f"s{i}", "json": json.dumps(meta).encode()})
    info = describe(tmp_path / "shards", shard_mapping(["stars=score"]))
    assert info["splits"]["all"]["tasks"] == {"rating": 2}
    assert [a.get("stars") for a in iter_annotations(tmp_path / "shards", "all", mapping=["stars=score"])] == [
        5, None, 2, None]
    report = inspect_shards(tmp_path / "shards", mapping=["stars=score"])
    assert report["splits"]["all"]["review_words"] == {"count": 4, "min": 4, "mean": 4.0, "median": 4.0, "max": 4}
    assert "  review words:   n=4 min=4" in format_report(report)


def test_a_new_format_is_a_convert_flag_and_converts(toy_format: object, tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    help_text = capsys.readouterr().out
    assert "--pairs FILE" in help_text and "pairs: a text file of DOCUMENT<TAB>SUMMARY lines" in help_text
    assert "imagefolder, jsonl, csv, parquet or pairs" in help_text
    (tmp_path / "pairs.txt").write_text("the cat sat on the mat all day\tcat sat\nno tab here\nbirds sing\tsong\n")
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", "pairs", "--pairs", str(tmp_path / "pairs.txt"), "--out", str(out),
                 "--no-progress", "--no-shuffle"]) == 0
    info = read_dataset_info(out)
    assert info["name"] == "pairs" and info["written_by"]["options"]["format"] == "pairs"
    assert info["splits"]["train"]["tasks"] == {"summarization": 2}
    assert info["splits"]["train"]["skipped"] == {"malformed_row": 1}
    assert [a["summaries"] for a in iter_annotations(out, "train")] == [["cat sat"], ["song"]]


def test_a_new_task_in_one_module_is_converted_trained_and_evaluated(toy_task: object, tmp_path: Path,
                                                                     one_thread: None) -> None:
    rows = []
    for i in range(24):  # bright pictures earn 5 stars, dark ones 1
        stars = 5 if i % 2 else 1
        Image.new("RGB", (32, 32), (230, 230, 230) if stars == 5 else (20, 20, 20)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "score": stars, "review": "bright" if stars == 5 else "dark"})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("train", "test"):
        convert_source("jsonl", ConvertOptions(out=tmp_path / "shards", split=split, progress=False),
                       input=str(tmp_path / "rows.jsonl"), mapping=["stars=score"])
    config = resolve_config({}, micro_overrides(tmp_path / "shards", tmp_path / "run", steps=30)
                            + ["tasks=[rating]", "train.lr=3e-3", "data.num_workers=0"])
    result = train(config)
    assert set(result.final_losses) == {"rating", "total"}
    scored = evaluate(result.components, config, torch.device("cpu"), split="test")
    assert scored.metrics["rating"]["accuracy"] == 1.0  # the trivial baseline scores 0.5
