"""`mmtl data convert`: real COCO counts, image folders and JSONL/CSV round trips, awkward images, bad input."""
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.convert.records import decode_text
from data_pipelines.shards import iter_annotations, read_dataset_info, split_shards
from mmtl.cli import main
from tests.conftest import micro_overrides

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO = SHARED_DATA / "coco_mini"


def _raw_samples(path: Path, split: str) -> dict[str, dict]:
    return {s["__key__"]: s for url in split_shards(path, split) for s in wds.WebDataset(url, shardshuffle=False)}


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def _coco_expected(split: str) -> tuple[int, int, Counter, int]:
    captions = json.loads((COCO / "annotations" / f"captions_{split}2017.json").read_text())
    instances = json.loads((COCO / "annotations" / f"instances_{split}2017.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    pairs = {(a["image_id"], a["category_id"]) for a in instances["annotations"]}
    images = {a["image_id"] for a in captions["annotations"]} | {i for i, _ in pairs}
    return len(images), len(captions["annotations"]), Counter(names[c] for _, c in pairs), len(names)


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (COCO / "annotations").is_dir():
        pytest.skip(f"{COCO} not present")
    out = tmp_path_factory.mktemp("coco") / "shards"
    for split, extra in (("train", ["--maxcount", "50"]), ("val", ["--resize-max", "64", "--workers", "2"])):
        assert main(["data", "convert", "--format", "coco", "--images", str(COCO / f"{split}2017"),
                     "--captions", str(COCO / "annotations" / f"captions_{split}2017.json"),
                     "--instances", str(COCO / "annotations" / f"instances_{split}2017.json"),
                     "--out", str(out), "--split", split, "--no-progress", *extra]) == 0
    return out


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_mini_counts_match_its_json(coco_shards: Path, split: str) -> None:
    images, captions, labels, categories = _coco_expected(split)
    annotations = list(iter_annotations(coco_shards, split))
    assert len(annotations) == images
    assert sum(len(a.get("captions", [])) for a in annotations) == captions
    assert Counter(label for a in annotations for label in a.get("labels", [])) == labels
    info = read_dataset_info(coco_shards)
    assert info["splits"][split]["samples"] == images and len(info["classes"]) == categories
    assert info["label_mode"] == "multi" and info["written_by"]["options"]["format"] == "coco"
    if split == "train":
        assert len(info["splits"]["train"]["shards"]) == 2  # 80 images, 50 per shard
    else:  # pre-resized: long side 64, aspect kept
        for sample in _raw_samples(coco_shards, "val").values():
            assert max(_jpeg(sample["jpg"]).size) == 64


def test_micro_model_trains_on_converted_coco(coco_shards: Path, tmp_path: Path) -> None:
    overrides = micro_overrides(coco_shards, tmp_path / "run", steps=2)
    overrides += ["data.train_split=val", "tasks=[recognition,captioning]", "data.batch_size=4"]
    assert main(["train", *overrides]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["data/skipped"] == 0
    assert {"loss/recognition", "loss/captioning"} <= set(records[-1])


def test_coco_leaves_out_images_without_annotations(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (20, 10), (0, 128, 0)).save(images / name)
    coco = {"images": [{"id": i, "file_name": n} for i, n in enumerate(["a.jpg", "b.jpg", "c.jpg", "gone.jpg"])],
            "annotations": [{"image_id": 0, "caption": " a  green\nbox "}, {"image_id": 0, "caption": "green"},
                            {"image_id": 3, "caption": "lost"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    instances = {"images": coco["images"], "categories": [{"id": 7, "name": "box"}],
                 "annotations": [{"image_id": 1, "category_id": 7}, {"image_id": 1, "category_id": 7}]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", "coco", "--images", str(images), "--captions",
                 str(tmp_path / "captions.json"), "--instances", str(tmp_path / "instances.json"),
                 "--out", str(out), "--no-progress"]) == 0
    annotations = {a["image_id"]: a for a in iter_annotations(out, "train")}
    assert annotations[0]["captions"] == ["a green box", "green"] and "labels" not in annotations[0]
    assert annotations[1]["labels"] == ["box"] and set(annotations) == {0, 1}
    info = read_dataset_info(out)
    assert info["splits"]["train"]["skipped"] == {"no_annotations": 1, "missing_image_file": 1}
    printed = capsys.readouterr().out
    assert "no_annotations: 1" in printed and "missing_image_file: 1" in printed


def _awkward_images(root: Path) -> None:
    """One class folder per kind of awkward input."""
    for name in ("cmyk", "palette", "rotated", "tiny", "gray", "big"):
        (root / name).mkdir(parents=True)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cmyk" / "red.jpg")  # CMYK red
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    palette.info["transparency"] = 0  # index 0 (blue) is transparent: must come out white, not black/blue
    palette.putpixel((7, 7), 1)
    palette.save(root / "palette" / "p.png")
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: red ends up on top
    wide.save(root / "rotated" / "r.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (1, 1), (10, 200, 10)).save(root / "tiny" / "one.png")
    Image.new("L", (12, 12), 128).save(root / "gray" / "g.jpg")
    Image.new("RGB", (900, 300), (20, 20, 20)).save(root / "big" / "wide.jpg")
    (root / "big" / "notes.txt").write_text("not an image")
    (root / "big" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")


def test_imagefolder_round_trip_normalises_awkward_images(tmp_path: Path, capsys) -> None:
    root, out = tmp_path / "folder", tmp_path / "out"
    _awkward_images(root)
    assert main(["data", "convert", "--format", "imagefolder", "--root", str(root), "--out", str(out),
                 "--resize-max", "300", "--no-progress", "--workers", "2"]) == 0
    info = read_dataset_info(out)
    assert info["label_mode"] == "single"
    assert info["classes"] == ["big", "cmyk", "gray", "palette", "rotated", "tiny"]
    assert info["splits"]["train"]["skipped"] == {"not_an_image_file": 1, "undecodable_image": 1}
    samples = _raw_samples(out, "train")
    images = {json.loads(s["json"])["labels"][0]: _jpeg(s["jpg"]) for s in samples.values()}
    assert all(len(json.loads(s["json"])["labels"]) == 1 for s in samples.values()) and len(samples) == 6
    assert all(image.mode == "RGB" for image in images.values())
    r, g, b = images["cmyk"].getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60
    assert images["palette"].getpixel((0, 0)) == pytest.approx((255, 255, 255), abs=8)  # transparent -> white
    rotated = images["rotated"]
    assert rotated.size == (20, 40)
    assert rotated.getpixel((10, 5))[0] > 200 and rotated.getpixel((10, 35))[2] > 200  # red on top, blue below
    assert images["tiny"].size == (1, 1) and images["gray"].getpixel((6, 6)) == pytest.approx((128,) * 3, abs=3)
    assert images["big"].size == (300, 100)
    assert "images re-encoded: 6" in capsys.readouterr().out


def test_jsonl_mixes_image_text_text_only_and_image_only_rows(tmp_path: Path) -> None:
    Image.new("RGB", (30, 20), (200, 0, 0)).save(tmp_path / "red.png")
    rows = [
        {"image": "red.png", "captions": ["a red square"], "labels": ["red"]},
        {"source_text": ["First sentence .", "Second one ."], "tldr": ["a summary"]},
        {"image": "red.png", "labels": ["red", "square"], "id": "again"},
        {"image": "missing.png", "labels": ["red"]},
        {"document": "a document without summaries"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", "jsonl", "--input", str(tmp_path / "rows.jsonl"), "--out", str(out),
                 "--map", "document=source_text", "--map", "summaries=tldr", "--map", "key=id",
                 "--no-progress"]) == 0
    samples = _raw_samples(out, "train")
    assert set(samples) == {"red", "row00000001", "again"}
    assert "jpg" in samples["red"] and "jpg" not in samples["row00000001"]
    text_only = json.loads(samples["row00000001"]["json"])
    assert text_only == {"document": "First sentence . Second one .", "summaries": ["a summary"]}
    info = read_dataset_info(out)
    assert info["splits"]["train"]["tasks"] == {"recognition": 2, "captioning": 1, "summarization": 1}
    assert info["splits"]["train"]["skipped"] == {"missing_image_file": 1, "no_annotations": 1, "malformed_row": 1}
    assert info["classes"] == ["red", "square"]


def test_csv_latin1_text_and_list_cells(tmp_path: Path, capsys) -> None:
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "blue.jpg")
    text = ("image,tags,caption,article,summary\n"
            "blue.jpg,blue|square,\"[\"\"a blue square\"\", \"\"a square\"\"]\",,\n"
            ",,,Le café est très bon .,café\n")
    (tmp_path / "rows.csv").write_bytes(text.encode("latin-1"))
    out = tmp_path / "out"
    assert main(["data", "convert", "--format", "csv", "--input", str(tmp_path / "rows.csv"), "--out", str(out),
                 "--map", "labels=tags", "--map", "captions=caption", "--map", "document=article",
                 "--map", "summaries=summary", "--no-progress"]) == 0
    annotations = list(iter_annotations(out, "train"))
    assert annotations[0] == {"labels": ["blue", "square"], "captions": ["a blue square", "a square"]}
    assert annotations[1] == {"document": "Le café est très bon .", "summaries": ["café"]}
    assert "non-UTF-8 fallback" in capsys.readouterr().out


def test_decode_text_falls_back_per_line() -> None:
    text, fallback = decode_text("naïve\n".encode() + "café\n".encode("latin-1") + "ok".encode())
    assert text.splitlines() == ["naïve", "café", "ok"] and fallback == 1


def test_label_mode_single_refuses_multi_label_rows(tmp_path: Path, capsys) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"document": "x", "summaries": ["y"], "labels": ["a", "b"]}))
    code = main(["data", "convert", "--format", "jsonl", "--input", str(tmp_path / "rows.jsonl"),
                 "--out", str(tmp_path / "o"), "--label-mode", "single", "--no-progress"])
    assert code == 2 and "several labels" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--format", "jsonl", "--input", "{tmp}/nope.jsonl"], "--input file not found"),
    (["--format", "tfrecord", "--input", "{tmp}/x"], "unknown format 'tfrecord'; choose from: coco, imagefolder"),
    (["--format", "coco", "--images", "{tmp}"], "--format coco needs --captions"),
    (["--format", "jsonl", "--input", "{tmp}/rows.jsonl", "--map", "document"], "expected FIELD=PATH"),
    (["--format", "jsonl", "--input", "{tmp}/rows.jsonl", "--map", "text=document"], "unknown field 'text'"),
    (["--format", "jsonl", "--input", "{tmp}/rows.jsonl", "--out", "{tmp}/taken"], "already holds split 'train'"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"document": "a text", "summaries": ["a"]}) + "\n")
    base = ["data", "convert", "--no-progress", "--out", str(tmp_path / "taken")]
    assert main(base + ["--format", "jsonl", "--input", str(tmp_path / "rows.jsonl")]) == 0
    capsys.readouterr()
    code = main(base + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    if "already holds" in message:  # --overwrite replaces the split instead
        assert main(base + [a.format(tmp=tmp_path) for a in args] + ["--overwrite"]) == 0
        assert len(list((tmp_path / "taken").glob("train-*.tar"))) == 1


def test_convert_help_lists_formats(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "convert", "--help"])
    assert exit_info.value.code == 0
    assert "coco, imagefolder, jsonl, csv or parquet" in capsys.readouterr().out


def test_huge_photo_needs_resize_max_and_then_converts(tmp_path: Path, capsys) -> None:
    (tmp_path / "root" / "huge").mkdir(parents=True)
    Image.new("L", (9000, 8000), 90).save(tmp_path / "root" / "huge" / "h.jpg", quality=50)  # 72 Mpx
    Image.new("RGB", (10, 10), 90).save(tmp_path / "root" / "huge" / "small.jpg")
    base = ["data", "convert", "--format", "imagefolder", "--root", str(tmp_path / "root"), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0  # over the loader's 64 Mpx limit: skipped
    assert read_dataset_info(tmp_path / "a")["splits"]["train"]["skipped"] == {"decompression_bomb": 1}
    assert "convert with --resize-max" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "b"), "--resize-max", "256"]) == 0
    sizes = sorted(_jpeg(s["jpg"]).size for s in _raw_samples(tmp_path / "b", "train").values())
    assert sizes == [(10, 10), (256, 228)]


def test_every_reader_option_is_a_convert_flag(capsys, monkeypatch) -> None:
    """Each format declares its options next to its reader; the command line offers every one of them."""
    from data_pipelines.convert import format_names, source_options

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    help_text = capsys.readouterr().out
    assert format_names() == ["coco", "imagefolder", "jsonl", "csv", "parquet"]
    assert [o.command_flag for o in source_options()] == [
        "--images", "--captions", "--instances", "--allow-outside-root", "--root", "--input", "--image-root", "--map"]
    for option in source_options():
        assert f"{option.command_flag} " in help_text or f"{option.command_flag}\n" in help_text
