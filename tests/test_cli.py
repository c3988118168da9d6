"""The ``mmtl`` command as a user drives it: synth -> train -> eval -> predict, and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmtl.cli import main
from tests.conftest import micro_overrides


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    assert main(["data", "synth", "--out", str(data), "--num", "48", "--val", "8", "--test", "8",
                 "--image-size", "32", "--difficulty", "easy"]) == 0
    assert main(["train", *micro_overrides(data, run, steps=3)]) == 0
    return data, run


def test_synth_then_train_writes_checkpoint(trained_run: tuple[Path, Path], capsys) -> None:
    data, run = trained_run
    assert json.loads((data / "dataset.json").read_text())["splits"]["train"]["samples"] == 48
    assert (run / "checkpoints" / "LATEST").is_file()


def test_eval_prints_table_with_baselines(trained_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained_run
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run), "--split", "test", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for task in ("recognition", "captioning", "summarization"):
        assert task in printed
    metrics = json.loads(out.read_text())
    assert metrics["samples"] == 8
    assert set(metrics["baseline"]) == {"recognition", "captioning", "summarization"}


def test_predict_text_and_json(trained_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained_run
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    assert main(["predict", "--checkpoint", str(run), "--image", str(image), "--text", "anna drew a red circle .",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"recognition", "captioning", "summarization"}
    assert isinstance(result["captioning"], str)
    assert main(["predict", "--checkpoint", str(run), "--image", str(image), "--tasks", "captioning"]) == 0
    assert capsys.readouterr().out.startswith("captioning: ")
    # without text, summarization has nothing to read and is skipped
    assert main(["predict", "--checkpoint", str(run), "--image", str(image), "--json"]) == 0
    assert "summarization" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv, message", [
    (["train", "train.stpes=3"], "train.stpes"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["eval", "--checkpoint", "nowhere"], "no checkpoint found"),
    (["train", "data.path=nowhere", "train.steps=1"], "mmtl data synth"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_predict_bad_image_and_unknown_task(trained_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, run = trained_run
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    assert main(["predict", "--checkpoint", str(run), "--image", str(not_image)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run), "--text", "x", "--tasks", "dancing"]) == 2
    assert "unknown task dancing" in capsys.readouterr().err


def test_console_script_help_and_error_exit_code(tmp_path: Path) -> None:
    """Through a real process: every subcommand has --help; a bad key exits 2 without a traceback."""
    for sub in (["data", "synth"], ["train"], ["eval"], ["predict"], ["quickstart"]):
        done = subprocess.run([sys.executable, "-m", "mmtl", *sub, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout
    done = subprocess.run([sys.executable, "-m", "mmtl", "train", "model.widht=3"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2 and "model.widht" in done.stderr and "Traceback" not in done.stderr
