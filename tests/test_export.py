"""The shareable model folder: the run's model card, and `mmtl export` (inference-only, hub layout)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mmtl
from mmtl.cli import main
from mmtl.exporting import folder_size
from mmtl.version import __version__
from tests.conftest import micro_overrides
from tests.test_python_api import first_png


@pytest.fixture(scope="module")
def licensed_run(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro run (moving average on, so the export must pick the inference weights) on a copy of
    the micro data whose dataset.json names a licence, evaluated once (the card records it)."""
    root = tmp_path_factory.mktemp("licensed")
    data = root / "data"
    shutil.copytree(micro_data, data)
    info = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**info, "license": "CC-BY-4.0"}))
    config = mmtl.load_config(None, [*micro_overrides(data, root / "run", steps=2), "train.ema_decay=0.9",
                                     "train.loggers=[]"])
    run = mmtl.train(config, command="mmtl train --config my.yaml train.steps=2")
    mmtl.evaluate(run.run_dir, data=str(data), max_samples=8, update_card=True)
    return run.run_dir


def test_the_run_folder_explains_itself(licensed_run: Path) -> None:
    card = (licensed_run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mmtl\nlicense: CC-BY-4.0\n")  # the front matter hubs read
    meta = json.loads(next((licensed_run / "checkpoints").glob("step-*/meta.json")).read_text())
    for needle in ("recognition", "captioning", "summarization", "train 96, val 16, test 16", "CC-BY-4.0",
                   "Preset `micro`", f"{meta['parameters']['total']:,}", "mmtl train --config my.yaml train.steps=2",
                   f"mmtl {__version__}", "trivial baseline", "f1_micro"):
        assert needle in card, needle
    assert "Not evaluated yet" not in card  # mmtl.evaluate recorded its metrics


def test_export_is_small_loads_and_predicts_identically(licensed_run: Path, micro_data: Path, tmp_path: Path) -> None:
    out = mmtl.export(licensed_run, tmp_path / "model")
    assert {p.name for p in out.iterdir()} <= {"model.safetensors", "config.yaml", "meta.json", "README.md", "card.json"}
    assert {"model.safetensors", "config.yaml", "meta.json", "README.md"} <= {p.name for p in out.iterdir()}
    checkpoint = next((licensed_run / "checkpoints").glob("step-*"))
    ratio = folder_size(out) / folder_size(checkpoint)
    assert ratio <= 0.40, ratio  # no optimiser state, one copy of the weights
    assert (out / "model.safetensors").read_bytes() == (checkpoint / "ema.safetensors").read_bytes()
    image = first_png(micro_data)
    text = "anna drew a red circle near the top ."
    original = mmtl.Predictor.from_pretrained(licensed_run).predict(image=image, text=text).to_dict()
    exported = mmtl.Predictor.from_pretrained(out).predict(image=image, text=text).to_dict()
    assert exported == original and set(exported) == {"recognition", "captioning", "summarization"}
    assert "CC-BY-4.0" in (out / "README.md").read_text()


def test_export_command_refuses_to_replace_what_is_not_an_export(licensed_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(licensed_run), "--out", str(out)]) == 0
    assert main(["export", "--checkpoint", str(licensed_run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(licensed_run), "--out", str(out), "--overwrite"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", "--checkpoint", str(licensed_run), "--out", str(mine), "--overwrite"]) == 2
    assert (mine / "notes.txt").read_text() == "keep me"
    assert main(["export", "--checkpoint", str(licensed_run), "--out", str(licensed_run / "checkpoints" / "x")]) == 2
    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()
