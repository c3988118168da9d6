"""Standard webdataset shards (img2dataset / open_clip layout, no dataset.json) read directly:
references (directory, tar, brace pattern, list, pipe:), field mappings, the cached scan, inspect,
training, prediction, and a mix with mmtl-converted sources."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import webdataset as wds

from data_pipelines.pipes import allow_pipes
from data_pipelines.shards import iter_annotations, read_dataset_info, split_shards
from data_pipelines.shardsets import resolve, to_contract
from mmtl.cli import main
from mmtl.errors import MMTLError


def shared_data() -> Path:
    """``$MMTL_SHARED_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("MMTL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def coco_pairs() -> list[tuple[bytes, str, int]]:
    """(JPEG bytes, first caption, image id) of the COCO mini train images; skips when absent."""
    root = shared_data() / "coco_mini"
    captions = root / "annotations" / "captions_train2017.json"
    if not captions.is_file():
        pytest.skip(f"real data not found at {root} (set MMTL_SHARED_DATA)")
    document = json.loads(captions.read_text())
    first = {}
    for ann in document["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"].strip())
    return [((root / "train2017" / image["file_name"]).read_bytes(), first[image["id"]], image["id"])
            for image in sorted(document["images"], key=lambda i: i["id"]) if image["id"] in first]


def write_img2dataset(out: Path, pairs: list[tuple[bytes, str, int]], per_shard: int = 25) -> list[Path]:
    """Shards as img2dataset writes them: NNNNN.tar of jpg + txt + json (url, key, status, caption, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, (jpg, caption, image_id) in enumerate(pairs):
            key = f"{i // per_shard:05d}{i % per_shard:04d}"
            meta = {"url": f"http://example.com/{image_id}.jpg", "key": key, "status": "success", "caption": caption,
                    "width": 256, "height": 256, "coco": {"image_id": image_id, "tags": [f"t{image_id % 3}"]}}
            sink.write({"__key__": key, "jpg": jpg, "txt": caption.encode(), "json": json.dumps(meta).encode()})
    return sorted(out.glob("*.tar"))


@pytest.fixture(scope="module")
def img2dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pairs = coco_pairs()
    out = tmp_path_factory.mktemp("img2dataset") / "shards"
    write_img2dataset(out, pairs)
    return out


def test_every_kind_of_reference_names_the_same_shards(img2dataset: Path) -> None:
    tars = [str(p) for p in sorted(img2dataset.glob("*.tar"))]
    assert len(tars) == 4
    assert split_shards(img2dataset, "train") == tars  # a directory: one unnamed split answers to any name
    assert resolve(f"{img2dataset}/{{00000..00003}}.tar").urls("train") == tars
    assert resolve("::".join(tars)).urls("val") == tars
    assert resolve(tars[0]).urls("train") == tars[:1]
    piped = f"pipe:cat {img2dataset}/{{00000..00001}}.tar"
    with pytest.raises(MMTLError, match="data.allow_pipe=true"):  # a command runs only with the user's opt-in
        resolve(piped)
    allow_pipes(True)
    assert resolve(piped).urls("train") == [f"pipe:cat {tars[0]}", f"pipe:cat {tars[1]}"]
    assert sum(1 for _ in iter_annotations(piped, "train")) == 50
    with pytest.raises(MMTLError, match="3 of 5 shard"):
        resolve(f"{img2dataset}/{{00002..00006}}.tar")


def test_scan_counts_once_and_caches_beside_the_shards(img2dataset: Path, monkeypatch) -> None:
    info = read_dataset_info(img2dataset)
    samples = len(coco_pairs())
    assert info["splits"]["all"]["samples"] == samples
    assert info["splits"]["all"]["tasks"] == {"captioning": samples}
    assert info["classes"] == []
    assert list(img2dataset.glob(".mmtl-scan-*.json"))
    import data_pipelines.shardsets as shardsets

    monkeypatch.setattr(shardsets, "_scan", lambda *a: pytest.fail("scanned again"))
    assert read_dataset_info(img2dataset) == info
    # another mapping is another scan (labels from a nested JSON list)
    monkeypatch.undo()
    mapped = read_dataset_info(img2dataset, ["labels=json.coco.tags[]"])
    assert mapped["classes"] == ["t0", "t1", "t2"] and mapped["label_mode"] == "single"
    assert mapped["splits"]["all"]["tasks"] == {"recognition": samples, "captioning": samples}


def test_mapping_reads_members_nested_json_and_list_items() -> None:
    raw = {"__key__": "k", "jpg": b"...", "txt": b"a dog on a couch",
           "json": json.dumps({"status": "success", "meta": {"label": 3, "alts": [{"text": "x"}, {"text": "y"}]},
                               "summary": {"outcome": "it ends"}}).encode()}
    default = json.loads(to_contract(raw, {})["json"])
    assert default == {"captions": ["a dog on a couch"]}  # txt -> captions; other metadata dropped
    mapped = json.loads(to_contract(raw, {"captions": ["meta.alts[].text", "txt"], "labels": ["json.meta.label"],
                                          "summaries": ["summary.outcome"], "document": ["txt"]})["json"])
    assert mapped == {"captions": ["x", "y", "a dog on a couch"], "labels": ["3"], "summaries": ["it ends"],
                      "document": "a dog on a couch"}
    assert to_contract(raw, {})["jpg"] == b"..."
    broken = {**raw, "json": b"[1, 2]"}
    assert to_contract(broken, {})["json"] == b"[1, 2]"  # left for the loader to count as malformed_json


def test_inspect_works_on_a_directory_a_single_tar_and_a_pattern(img2dataset: Path, capsys) -> None:
    samples = len(coco_pairs())
    assert main(["data", "inspect", str(img2dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["all"]["samples"] == samples and report["splits"]["all"]["tasks"] == {"captioning": samples}
    assert report["dataset_json"] is False and report["splits"]["all"]["image_width"]["count"] == samples
    assert main(["data", "inspect", str(img2dataset / "00001.tar"), "--map", "labels=coco.tags[]"]) == 0
    out = capsys.readouterr().out
    assert "[all] 25 good samples" in out and "recognition=25" in out and "no dataset.json" in out
    assert main(["data", "inspect", f"{img2dataset}/{{00000..00002}}.tar", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["all"]["samples"] == 75
    assert main(["data", "inspect", str(img2dataset), "--map", "image=jpg"]) == 2
    assert "image cannot be mapped for shards" in capsys.readouterr().err


def test_one_train_command_on_img2dataset_shards_then_predict(img2dataset: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", f"data.path={img2dataset}", "tasks=[captioning]", "model.preset=micro", "train.steps=3",
                 "data.batch_size=8", "train.progress=false", "train.log_every=1", f"output_dir={run}", "model.decoder.max_length=24",
                 "eval.max_samples=8", "eval.generation.max_length=6"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/captioning"] for r in log if "loss/captioning" in r]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    image = tmp_path / "photo.jpg"
    image.write_bytes(coco_pairs()[0][0])
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--image", str(image), "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert set(prediction) >= {"captioning"} and isinstance(prediction["captioning"], str), prediction


def test_img2dataset_coco_and_documents_mix_through_data_sources(img2dataset: Path, tmp_path: Path) -> None:
    root = shared_data()
    coco = tmp_path / "coco"
    assert main(["data", "convert", "--format", "coco", "--images", str(root / "coco_mini" / "train2017"),
                 "--captions", str(root / "coco_mini" / "annotations" / "captions_train2017.json"),
                 "--instances", str(root / "coco_mini" / "annotations" / "instances_train2017.json"),
                 "--out", str(coco), "--no-progress", "--resize-max", "64"]) == 0
    docs = tmp_path / "tldr"
    assert main(["data", "convert", "--format", "jsonl", "--input", str(root / "scitldr" / "dev.jsonl"),
                 "--map", "document=source", "--map", "summaries=target", "--out", str(docs), "--no-progress"]) == 0
    config = tmp_path / "mix.yaml"
    config.write_text(
        "tasks: [recognition, captioning, summarization]\n"
        "data:\n  mixing: temperature\n  sources:\n"
        f"    - {{path: '{img2dataset}/{{00000..00003}}.tar', tasks: [captioning]}}\n"
        f"    - {{path: '{coco}'}}\n"
        f"    - {{path: '{docs}', tasks: [summarization]}}\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "model.preset=micro", "train.steps=4", "data.batch_size=16",
                 "train.progress=false", f"output_dir={run}", "model.decoder.max_length=24", "data.val_split=train",
                 "train.log_every=1"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    trained = {key.split("/", 1)[1] for record in log for key in record if key.startswith("loss/")}
    assert {"recognition", "captioning", "summarization"} <= trained


def test_preview_draws_img2dataset_shards_with_their_txt_captions(img2dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sheet.png"
    assert main(["data", "preview", f"{img2dataset}/{{00000..00001}}.tar", "--out", str(out), "--num", "4"]) == 0
    from PIL import Image

    sheet = Image.open(out).convert("RGB")
    assert sheet.width > 2 * 192 and sheet.height > 2 * 192
