"""Every script in tools/ runs: each imports and parses its --help, and the cheap ones run end to end
with their smallest settings (tools with their own tests: test_bench_balancers, test_bench_mtl,
test_bench_recipe, test_delta). bench_loader runs on a miniature of ../shared/data built here."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests import conftest

TOOLS = conftest.TOOLS
ALL_TOOLS = sorted(TOOLS.glob("*.py"))


def load_tool(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a tool script as a module, with tools/ on sys.path as when it runs as a script."""
    monkeypatch.syspath_prepend(str(TOOLS))
    return conftest.load_tool(path.stem)


def run_tool(path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``main()`` of a tool with ``argv`` as its command line; its exit status."""
    module = load_tool(path, monkeypatch)
    monkeypatch.setattr(sys, "argv", [path.name, *argv])
    try:
        code = module.main()
    except SystemExit as exc:
        code = exc.code
    return int(code or 0)


def last_json(out: str) -> dict:
    """The JSON line a benchmark prints last."""
    return json.loads(out.strip().splitlines()[-1])


def test_tools_are_found() -> None:
    assert {"bench_loader.py", "bench_serve.py", "bench_shuffle.py"} <= {p.name for p in ALL_TOOLS}


@pytest.mark.parametrize("path", ALL_TOOLS, ids=lambda p: p.stem)
def test_every_tool_imports_and_prints_its_help(path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    module = load_tool(path, monkeypatch)
    if not hasattr(module, "main"):  # a library of another tool (recipe_reference: bench_recipe's)
        assert module.__doc__
        return
    assert run_tool(path, ["--help"], monkeypatch) == 0
    assert "usage:" in capsys.readouterr().out


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def miniature_shared_data(root: Path) -> Path:
    """The two folders bench_loader reads, with four ImageNet and two COCO images per split."""
    imagenet = root / "imagenet_sample"
    imagenet.mkdir(parents=True)
    for i, name in enumerate(["n01440764_tench", "n01443537_goldfish", "n01484850_great_white_shark",
                              "n01491361_tiger_shark"]):
        (imagenet / f"{name}.JPEG").write_bytes(_jpeg((60 * i, 100, 200 - 40 * i)))
    coco = root / "coco_mini"
    (coco / "annotations").mkdir(parents=True)
    for part in ("train", "val"):
        (coco / f"{part}2017").mkdir()
        images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (1, 2)]
        for image in images:
            (coco / f"{part}2017" / image["file_name"]).write_bytes(_jpeg((30 * image["id"], 90, 90)))
        captions = [{"id": i, "image_id": i, "caption": f"a picture number {i}"} for i in (1, 2)]
        instances = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 4, 4]} for i in (1, 2)]
        categories = [{"id": 1, "name": "thing"}]
        (coco / "annotations" / f"captions_{part}2017.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (coco / "annotations" / f"instances_{part}2017.json").write_text(
            json.dumps({"images": images, "annotations": instances, "categories": categories}))
    return root


def test_bench_loader_converts_its_manifest_and_reports_a_ratio(tmp_path: Path, monkeypatch, capsys) -> None:
    """Its manifest's image paths stay inside the image folder, so the converter reads them all."""
    data = miniature_shared_data(tmp_path / "data")
    argv = ["--data", str(data), "--image-size", "32", "--resize-max", "40", "--workers", "1",
            "--max-samples", "4", "--shard-size", "4", "--repeats", "1"]
    assert run_tool(TOOLS / "bench_loader.py", argv, monkeypatch) == 0
    result = last_json(capsys.readouterr().out)
    assert result["ratio"] > 0 and {r["samples"] for r in result["rows"] if r["data"].startswith("imagenet")} == {4}


def test_bench_shuffle_smallest(monkeypatch, capsys) -> None:
    argv = ["--classes", "2", "--per-class", "8", "--batch-size", "4", "--batches", "2", "--shuffle-buffer", "8",
            "--maxcount", "8"]
    assert run_tool(TOOLS / "bench_shuffle.py", argv, monkeypatch) == 0
    assert last_json(capsys.readouterr().out)


def test_bench_generate_smallest(monkeypatch, capsys) -> None:
    argv = ["--preset", "micro", "--batch", "1", "--tokens", "2", "--text-tokens", "4", "--vocab", "50",
            "--repeats", "1", "--threads", "1"]
    assert run_tool(TOOLS / "bench_generate.py", argv, monkeypatch) == 0
    assert last_json(capsys.readouterr().out)


def test_bench_train_smallest(monkeypatch, capsys) -> None:
    argv = ["--steps", "1", "--warmup", "0", "--samples", "8", "model.preset=micro", "data.batch_size=4",
            "data.num_workers=0"]
    assert run_tool(TOOLS / "bench_train.py", argv, monkeypatch) == 0
    assert last_json(capsys.readouterr().out)


def test_imagenet_folders_groups_the_sample_into_super_classes_with_held_out_images(tmp_path: Path, monkeypatch) -> None:
    tool = load_tool(TOOLS / "imagenet_folders.py", monkeypatch)
    source = tmp_path / "imagenet_sample"
    source.mkdir()
    for index in range(1000):
        (source / f"n{index:08d}_class{index}.JPEG").write_bytes(b"")
    counts = tool.write_folders(source, tmp_path / "out", test_every=5)
    assert tool.super_class_of(0) == "fish" and tool.super_class_of(200) == "dog" and tool.super_class_of(975) is None
    assert counts["train"]["dog"] + counts["test"]["dog"] == 118 and counts["test"]["dog"] == 118 // 5
    assert counts["train"]["artefact"] + counts["test"]["artefact"] == 526 // 5  # every fifth artefact kept
    assert set(counts["train"]) == set(counts["test"]) == set(tool.SUPER_CLASSES)  # every class is held out too
    linked = tmp_path / "out" / "test" / "fish"
    assert all(p.is_symlink() and p.resolve().parent == source.resolve() for p in linked.iterdir())


@pytest.mark.usefixtures("one_thread")
def test_bench_text_trains_then_reports_each_decoding(micro_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    train = [o for o in conftest.micro_overrides(micro_data, tmp_path / "run", steps=2)
             if not o.startswith(("data.path=", "output_dir=", "train.progress="))]
    argv = ["--run", str(tmp_path / "run"), "--data", str(micro_data), "--max-samples", "4",
            "--decoding", "greedy:whole_words=false", "--decoding", "blocked:no_repeat_ngram_size=2",
            "--train", *train, "tasks=[captioning,summarization]"]
    assert run_tool(TOOLS / "bench_text.py", argv, monkeypatch) == 0
    result = last_json(capsys.readouterr().out)
    rows = {(r["decoding"], r["task"]): r for r in result["rows"]}
    assert set(rows) == {(d, t) for d in ("trivial baseline", "greedy", "blocked") for t in ("captioning", "summarization")}
    assert {"rougeL", "repetition", "fragment_count", "top_opening"} <= set(rows["blocked", "summarization"])
