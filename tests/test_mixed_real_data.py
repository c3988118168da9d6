"""The issue-14 scenario on real data: COCO (captioning), SciTLDR (summarization) and an image folder built
from ImageNet JPEGs (single-label recognition), mixed; baselines, training with validation and eval
through the CLI. Skips when the shared data (MMTL_SHARED_DATA, else <repo>/../shared/data) is absent."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from mmtl.cli import main
from tests.conftest import micro_overrides

SHARED_DATA = Path(os.environ.get("MMTL_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
COARSE_CLASSES = {"fish": (0, 7), "bird": (7, 25), "amphibian": (25, 33), "reptile": (33, 70)}  # ImageNet index ranges
pytestmark = pytest.mark.skipif(not all((SHARED_DATA / d).is_dir() for d in ("coco_mini", "scitldr", "imagenet_sample")),
                                reason=f"shared data not found at {SHARED_DATA}")


def split_of(index: int) -> str:
    return {3: "val", 4: "test"}.get(index % 5, "train")


def image_folder(root: Path) -> dict[str, Path]:
    """ROOT/<split>/<coarse class>/<jpeg>: the first 70 ImageNet classes grouped into 4 coarse ones."""
    files = sorted((SHARED_DATA / "imagenet_sample").glob("*.JPEG"))
    for name, (start, stop) in COARSE_CLASSES.items():
        for index in range(start, stop):
            target = root / split_of(index) / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[index], target / files[index].name)
    return {split: root / split for split in ("train", "val", "test")}


def scitldr_rows(root: Path) -> dict[str, Path]:
    out = {}
    for split, name, count in (("train", "train", 48), ("val", "dev", 12), ("test", "test", 12)):
        lines = (SHARED_DATA / "scitldr" / f"{name}.jsonl").read_text().splitlines()[:count]
        out[split] = root / f"{split}.jsonl"
        out[split].write_text("\n".join(lines) + "\n")
    return out


def convert(*argv: str) -> None:
    assert main(["data", "convert", *argv, "--resize-max", "64", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def real_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real")
    coco = SHARED_DATA / "coco_mini"
    paths = {"coco": root / "coco", "tldr": root / "tldr", "animals": root / "animals"}
    for split, part in (("train", "train2017"), ("val", "val2017"), ("test", "val2017")):
        # coco_mini has annotations for train2017 and val2017 only; val2017 serves as val and test here
        convert("--format", "coco", "--images", str(coco / part), "--captions",
                str(coco / "annotations" / f"captions_{part}.json"), "--instances",
                str(coco / "annotations" / f"instances_{part}.json"), "--out", str(paths["coco"]), "--split", split)
    for split, rows in scitldr_rows(root).items():
        convert("--format", "jsonl", "--input", str(rows), "--map", "document=source", "--map", "summaries=target",
                "--out", str(paths["tldr"]), "--split", split)
    for split, folder in image_folder(root / "images").items():
        convert("--format", "imagefolder", "--root", str(folder), "--out", str(paths["animals"]), "--split", split)
    return paths


def write_config(path: Path, sources: dict[str, Path], coco_tasks: list[str]) -> Path:
    """configs/data/mixed_real.yaml with its data/ paths pointed at the converted sources."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / "mixed_real.yaml").read_text())
    for source in raw["data"]["sources"]:
        source["path"] = str(sources[Path(source["path"]).name])
    raw["data"]["sources"][0]["tasks"] = coco_tasks
    raw["data"]["path"] = str(sources["coco"])
    path.write_text(yaml.safe_dump(raw))
    return path


def test_coco_tags_and_a_single_label_folder_cannot_share_recognition(real_sources, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", real_sources, ["recognition", "captioning"])
    assert main(["train", "--config", str(config), *micro_overrides(real_sources["coco"], tmp_path / "r", 1)[1:]]) == 2
    err = capsys.readouterr().err
    assert f"multi-label: {real_sources['coco']}" in err and f"single-label: {real_sources['animals']}" in err


def test_mixed_real_data_scorecard_through_the_cli(real_sources, tmp_path: Path, capsys, one_thread) -> None:
    config = write_config(tmp_path / "c.yaml", real_sources, ["captioning"])
    run, base = tmp_path / "run", tmp_path / "base"
    overrides = micro_overrides(real_sources["coco"], run, steps=2)[1:] + ["eval.max_samples=8", "validation.max_samples=8"]
    assert main(["model", "info", "--config", str(config), *overrides]) == 0
    assert f"4 classes (single-label) from {real_sources['animals']}" in capsys.readouterr().out
    assert main(["baselines", "--config", str(config), *overrides, "--out", str(base)]) == 0
    assert main(["train", "--config", str(config), *overrides, "train.eval_every=2",
                 f"validation.baselines={base / 'baselines.json'}"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"),
                 "--baselines", str(base / "baselines.json"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {k: set(v["model"]) for k, v in result["sources"].items()} == {
        str(real_sources["coco"]): {"captioning"}, str(real_sources["tldr"]): {"summarization"},
        str(real_sources["animals"]): {"recognition"}}
    assert set(result["model"]["recognition"]) == {"top1", "top5"} and result["primary_metric"]["recognition"] == "top1"
    delta = result["delta"]
    assert set(delta["verdicts"]) == {"recognition", "captioning", "summarization"} and not delta["missing_tasks"]
    assert "Δm = " in printed and printed.count("Δm = mean over tasks") == 1 and "top5" in printed
    # COCO's captions and SciTLDR's abstracts share one vocabulary: larger than either single-task model's
    assert "the multi-task model's vocabulary holds" in delta["vocabulary_note"]
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(f"val_source/{real_sources['tldr']}/summarization/rougeL" in r for r in logged)
