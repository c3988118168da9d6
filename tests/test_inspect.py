"""`mmtl data inspect` and `mmtl data preview` as a user runs them, on clean and corrupt shards."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.inspect import inspect_shards
from mmtl.cli import main
from tests.conftest import MICRO_SIZES
from tests.test_loader_corrupt import CORRUPT_KEYS, TEST_MAX_PIXELS, write_corrupt_shards


def test_inspect_json_counts_tasks_classes_lengths_and_sizes(micro_data: Path, capsys) -> None:
    assert main(["data", "inspect", str(micro_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["splits"]) == set(MICRO_SIZES)
    for split, size in MICRO_SIZES.items():
        stats = report["splits"][split]
        assert stats["samples"] == size and stats["corrupt"] == 0
        assert stats["tasks"] == {"recognition": size, "captioning": size, "summarization": size}
        assert stats["image_width"]["min"] == stats["image_width"]["max"] == 32
        assert stats["caption_words"]["count"] == 3 * size  # a caption and two paraphrases each
        assert 0 < stats["summary_words"]["min"] <= stats["summary_words"]["mean"] <= stats["summary_words"]["max"]
        assert stats["document_words"]["mean"] > stats["summary_words"]["mean"]
    # the class histogram counts every label once per sample
    from data_pipelines.shards import iter_annotations

    labels = [label for a in iter_annotations(micro_data, "val") for label in a["labels"]]
    assert sum(report["splits"]["val"]["class_histogram"].values()) == len(labels)


def test_inspect_lists_each_corrupt_sample_with_its_reason(tmp_path: Path) -> None:
    write_corrupt_shards(tmp_path)
    report = inspect_shards(tmp_path, max_pixels=TEST_MAX_PIXELS)
    stats = report["splits"]["train"]
    assert stats["samples"] == 6 and stats["corrupt"] == len(CORRUPT_KEYS)
    assert {c["key"]: c["reason"] for c in report["corrupt_samples"]} == CORRUPT_KEYS
    assert all(c["shard"].startswith("train-") for c in report["corrupt_samples"])


def test_inspect_text_report_and_bad_path(micro_data: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "inspect", str(micro_data), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "[val] 16 good samples" in out and "[train]" not in out and "caption words:" in out
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no dataset.json" in err and err.count("\n") == 1
    assert main(["data", "inspect", str(micro_data), "--split", "nope"]) == 2
    assert "split(s) nope not in" in capsys.readouterr().err


def test_inspect_reports_the_context_lengths_that_keep_documents_whole(tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.jsonl"
    documents = [" ".join(["word"] * (10 * n)) for n in range(1, 11)]  # 10, 20, ..., 100 tokens
    rows.write_text("".join(json.dumps({"document": d, "summaries": ["a summary ."]}) + "\n" for d in documents))
    out = tmp_path / "shards"
    assert main(["data", "convert", "--format", "jsonl", "--input", str(rows), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["splits"]["train"]["document_tokens"]
    assert tokens["context_to_keep_whole"] == {"50%": 50, "90%": 90, "100%": 100}
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "context length keeping documents whole: 50% -> 50, 90% -> 90, 100% -> 100 tokens" in text
    assert main(["data", "inspect", str(out), "--context-length", "45"]) == 0
    assert ("model.text.context_length=50 keeps 50%, 90 keeps 90%, 100 keeps 100% of all documents whole"
            in capsys.readouterr().out)


def test_preview_draws_a_grid_of_thumbnails_with_text(micro_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sheet.png"
    assert main(["data", "preview", str(micro_data), "--out", str(out), "--num", "6", "--split", "val",
                 "--columns", "3"]) == 0
    assert str(out) in capsys.readouterr().out
    sheet = Image.open(out).convert("RGB")
    assert sheet.width > 3 * 192 and sheet.height > 2 * 192  # 3 columns x 2 rows of 192 px thumbnails
    TOP = 6 + 28  # sheet padding + header line
    # the 32 px picture is scaled up to fill its 192 px tile: no white left, many colours
    tile = np.asarray(sheet.crop((6, TOP, 6 + 192, TOP + 192 - 6)))
    assert (tile == 255).all(axis=2).mean() < 0.01 and len(np.unique(tile.reshape(-1, 3), axis=0)) > 5
    # dark text pixels under the first thumbnail (key, tags, caption)
    text_band = np.asarray(sheet.crop((6, TOP + 192, 6 + 192, TOP + 192 + 60)).convert("L"))
    assert text_band.min() < 80


def test_preview_marks_corrupt_samples_and_rejects_bad_output(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    write_corrupt_shards(data)
    assert main(["data", "preview", str(data), "--out", str(tmp_path / "s.png"), "--num", "12"]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 0
    assert main(["data", "preview", str(data), "--out", str(tmp_path / "s.gif")]) == 2
    err = capsys.readouterr().err
    assert "--out must end in .png or .jpg" in err and err.count("\n") == 1


@pytest.mark.parametrize("action", ["inspect", "preview"])
def test_help(action: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", action, "--help"])
    assert exit_info.value.code == 0 and "shards" in capsys.readouterr().out
