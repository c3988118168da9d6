"""Converter inputs: nested --map paths, the reserved `source` field, Parquet, hostile COCO JSON,
paths outside the image folder, null labels, and samples mixed across shards."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines.shards import iter_annotations, read_dataset_info, split_shards
from mmtl.cli import main


def _png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _convert(args: list[str]) -> int:
    return main(["data", "convert", "--no-progress", *args])


def _one_line_error(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmtl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err


# ---------------------------------------------------------------------------------------------
# --map: nested paths, list items, reserved fields


def test_map_reads_dotted_paths_and_list_items(tmp_path: Path) -> None:
    rows = [{"id": "a", "paper": {"abstract": ["First sentence .", "Second one ."]},
             "summary": {"outcome": "the outcome"},
             "annotations": [{"text": "caption one"}, {"text": "caption two"}], "tags": [{"name": "cat"}]}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "out"),
                     "--map", "document=paper.abstract", "--map", "summaries=summary.outcome",
                     "--map", "labels=tags[0].name", "--map", "key=id"]) == 0
    (annotation,) = iter_annotations(tmp_path / "out", "train")
    assert annotation["document"] == "First sentence . Second one ."
    assert annotation["summaries"] == ["the outcome"] and annotation["labels"] == ["cat"]
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "caps"),
                     "--map", "captions=annotations[].text", "--map", "document=paper.abstract[1]",
                     "--map", "summaries=summary.outcome"]) == 0
    (annotation,) = iter_annotations(tmp_path / "caps", "train")
    assert annotation["captions"] == ["caption one", "caption two"] and annotation["document"] == "Second one ."


def test_a_column_named_source_feeding_the_document_is_not_also_the_source_and_is_reported(tmp_path: Path, capsys) -> None:
    rows = [{"source": ["An abstract .", "More ."], "target": ["tldr"]}]
    (tmp_path / "tldr.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "tldr.jsonl"), "--out", str(tmp_path / "out"),
                     "--map", "document=source", "--map", "summaries=target"]) == 0
    assert "column 'source' feeds document" in capsys.readouterr().out
    (annotation,) = iter_annotations(tmp_path / "out", "train")
    assert annotation["document"] == "An abstract . More ." and "source" not in annotation
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "tldr.jsonl"), "--out", str(tmp_path / "named"),
                     "--map", "document=source", "--map", "summaries=target", "--map", "source=target"]) == 0
    assert "'source' is reserved for the data set name" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Parquet


def test_parquet_round_trip_with_image_bytes_paths_and_text_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.png").write_bytes(_png((0, 0, 200)))
    table = pa.table({
        "image": [{"bytes": _png(), "path": None}, {"bytes": None, "path": "img/b.png"}, None],
        "caption": ["a red card", "a blue card", None],
        "meta": [{"tags": ["red"]}, {"tags": ["blue", "card"]}, {"tags": []}],
        "article": [None, None, "A long document about cards ."],
        "highlights": [None, None, "cards"],
    })
    pq.write_table(table, tmp_path / "data.parquet")
    assert _convert(["--format", "parquet", "--input", str(tmp_path / "data.parquet"), "--out", str(tmp_path / "out"),
                     "--map", "captions=caption", "--map", "labels=meta.tags[]", "--map", "document=article",
                     "--map", "summaries=highlights"]) == 0
    info = read_dataset_info(tmp_path / "out")
    assert info["splits"]["train"]["tasks"] == {"recognition": 2, "captioning": 2, "summarization": 1}
    assert info["classes"] == ["blue", "card", "red"]
    samples = {tuple(a.get("captions", [])): a for a in iter_annotations(tmp_path / "out", "train")}
    assert samples[("a blue card",)]["labels"] == ["blue", "card"]
    import webdataset as wds

    raws = [s for url in split_shards(tmp_path / "out", "train") for s in wds.WebDataset(url, shardshuffle=False)]
    colours = sorted(Image.open(io.BytesIO(s["jpg"])).convert("RGB").getpixel((8, 6)) for s in raws if "jpg" in s)
    assert len(colours) == 2 and colours[0][2] > 150 and colours[1][0] > 150  # blue from the path, red from the bytes


def test_parquet_that_is_not_parquet_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.parquet").write_text("not parquet")
    code = _convert(["--format", "parquet", "--input", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "out")])
    _one_line_error(capsys, code, "not a readable Parquet file")


# ---------------------------------------------------------------------------------------------
# hostile COCO JSON (issue #17): one line, exit 2, no traceback


def _coco(tmp_path: Path, captions: object) -> list[str]:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "a.png").write_bytes(_png())
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return ["--format", "coco", "--images", str(tmp_path / "images"), "--captions", str(tmp_path / "captions.json"),
            "--out", str(tmp_path / "out")]


GOOD_IMAGES = [{"id": 1, "file_name": "a.png"}]
GOOD_CAPTIONS = [{"image_id": 1, "caption": "a red card"}]


@pytest.mark.parametrize("document, needle", [
    ({"images": {"1": "a.png"}, "annotations": GOOD_CAPTIONS}, "'images' must be a list, got dict"),
    ({"images": 5, "annotations": GOOD_CAPTIONS}, "'images' must be a list, got int"),
    ({"images": [{"id": 1, "file_name": 7}], "annotations": GOOD_CAPTIONS}, "images[0].file_name must be a string"),
    ({"images": [{"file_name": "a.png"}], "annotations": GOOD_CAPTIONS}, "images[0] has no 'id'"),
    ({"images": GOOD_IMAGES, "annotations": ["a caption"]}, "annotations[0] must be an object, got str"),
    ({"images": GOOD_IMAGES, "annotations": [{"image_id": 1}]}, "annotations[0] has no 'caption'"),
    ({"images": GOOD_IMAGES, "annotations": [{"image_id": [1], "caption": "x"}]}, "annotations[0].image_id must be"),
    ({"images": GOOD_IMAGES, "annotations": None}, "'annotations' must be a list"),
])
def test_coco_with_missing_keys_or_wrong_types_is_one_line(tmp_path: Path, capsys, document, needle) -> None:
    _one_line_error(capsys, _convert(_coco(tmp_path, document)), needle)


def test_coco_instances_with_wrong_types_is_one_line(tmp_path: Path, capsys) -> None:
    args = _coco(tmp_path, {"images": GOOD_IMAGES, "annotations": GOOD_CAPTIONS})
    (tmp_path / "instances.json").write_text(json.dumps(
        {"images": GOOD_IMAGES, "annotations": [{"image_id": 1, "category_id": 1}], "categories": [{"id": 1}]}))
    _one_line_error(capsys, _convert(args + ["--instances", str(tmp_path / "instances.json")]), "categories[0] has no 'name'")


@pytest.mark.parametrize("escape", ["../outside.png", "../../outside.png", "ABSOLUTE"])
def test_coco_file_name_outside_images_is_not_read_without_the_flag(tmp_path: Path, capsys, escape: str) -> None:
    base = tmp_path / "a" / "b"
    base.mkdir(parents=True)
    # where each escape lands, seen from base/images
    outside = {"../outside.png": base, "../../outside.png": base.parent, "ABSOLUTE": tmp_path}[escape] / "outside.png"
    outside.write_bytes(_png((1, 2, 3)))
    name = str(outside) if escape == "ABSOLUTE" else escape
    document = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": name}],
                "annotations": [{"image_id": 1, "caption": "inside"}, {"image_id": 2, "caption": "outside"}]}
    args = _coco(base, document)
    assert _convert(args) == 0
    out = capsys.readouterr().out
    assert "path_outside_root: 1" in out and "--allow-outside-root" in out
    assert [a["captions"] for a in iter_annotations(base / "out", "train")] == [["inside"]]
    assert _convert(args + ["--overwrite", "--allow-outside-root"]) == 0
    assert sorted(a["captions"][0] for a in iter_annotations(base / "out", "train")) == ["inside", "outside"]


def test_jsonl_image_paths_outside_the_image_root_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    (tmp_path / "data" / "ok.png").write_bytes(_png())
    rows = [{"image": "ok.png", "captions": ["fine"]}, {"image": "../secret.png", "captions": ["escape"]},
            {"image": str(tmp_path / "secret.png"), "captions": ["absolute"]}]
    (tmp_path / "data" / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "data" / "rows.jsonl"), "--out", str(tmp_path / "out")]) == 0
    assert "path_outside_root: 2" in capsys.readouterr().out
    assert [a["captions"] for a in iter_annotations(tmp_path / "out", "train")] == [["fine"]]


def test_every_path_outside_the_root_names_the_folder_and_the_flag(tmp_path: Path, capsys) -> None:
    """All rows skipped as outside the root: the one-line error names the folder checked and the flag."""
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere.png").write_bytes(_png())
    rows = [{"image": str(tmp_path / "elsewhere.png"), "captions": ["absolute"]}]
    (tmp_path / "data" / "rows.jsonl").write_text(json.dumps(rows[0]) + "\n")
    args = ["--format", "jsonl", "--input", str(tmp_path / "data" / "rows.jsonl"), "--out", str(tmp_path / "out")]
    _one_line_error(capsys, _convert(args), "path_outside_root", str(tmp_path / "data"), "--allow-outside-root")
    assert _convert(args + ["--allow-outside-root"]) == 0
    assert [a["captions"] for a in iter_annotations(tmp_path / "out", "train")] == [["absolute"]]


# ---------------------------------------------------------------------------------------------
# null labels (issue #17), mixing across shards (issue #13)


def test_null_labels_are_left_out_and_counted_never_a_class_named_none(tmp_path: Path, capsys) -> None:
    rows = [{"document": "one text .", "summaries": ["one"], "labels": [None]},
            {"document": "two text .", "summaries": ["two"], "labels": ["dog", None]},
            {"labels": [None]}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _convert(["--format", "jsonl", "--input", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "null label entries left out (no class named 'None'): 3" in out and "no_annotations: 1" in out
    info = read_dataset_info(tmp_path / "out")
    assert info["classes"] == ["dog"] and info["splits"]["train"]["tasks"]["recognition"] == 1


def test_imagefolder_shards_mix_classes_seeded(tmp_path: Path) -> None:
    for name in ("ant", "bee", "cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "photos" / name / f"{i}.png").write_bytes(_png((i * 20, 0, 0)))

    def shard_classes(out: str, *extra: str) -> list[set[str]]:
        assert _convert(["--format", "imagefolder", "--root", str(tmp_path / "photos"), "--out", str(tmp_path / out),
                         "--maxcount", "10", *extra]) == 0
        import webdataset as wds

        return [{json.loads(s["json"])["labels"][0] for s in wds.WebDataset(url, shardshuffle=False)}
                for url in split_shards(tmp_path / out, "train")]

    assert shard_classes("sorted", "--no-shuffle") == [{"ant"}, {"bee"}, {"cat"}, {"dog"}]
    mixed = shard_classes("mixed")
    assert len(mixed) == 4 and all(len(classes) >= 3 for classes in mixed)
    assert mixed == shard_classes("again")  # the same seed, the same order

    from data_pipelines.inspect import inspect_shards

    assert inspect_shards(tmp_path / "sorted")["splits"]["train"]["label_order"]["looks_sorted"] is True
    assert inspect_shards(tmp_path / "mixed")["splits"]["train"]["label_order"]["looks_sorted"] is False
