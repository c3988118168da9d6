"""The ``mmtl`` command as a user drives it: synth -> train -> eval -> predict, and bad input."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmtl.cli import main
from mmtl.errors import MMTLError
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
    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"), "--split", "test",
                 "--output", str(out)]) == 0
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
    (["eval", "--checkpoint", "nowhere", "--data", "nowhere"], "no checkpoint found"),
    (["eval", "--checkpoint", "nowhere"], "needs the data to evaluate on"),
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


# -- the error boundary (issue #17): one line, exit 2, tracebacks only with --debug -----------------
def _one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_output_paths_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["train", f"output_dir={a_file}", "train.steps=1"]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["train", f"output_dir={a_file / 'run'}", "train.steps=1"]) == 2
    _one_line_error(capsys, "is a file")
    assert main(["data", "synth", "--out", str(a_file), "--num", "4"]) == 2
    _one_line_error(capsys, "--out")
    # eval checks --output before loading anything: the checkpoint does not even exist
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a directory; give a file path")


def test_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    assert main(["train", "train.lr=.nan"]) == 2
    _one_line_error(capsys, "train.lr must be a finite number")
    with pytest.raises(MMTLError, match="train.lr must be a finite number"):
        main(["--debug", "train", "train.lr=.nan"])
    with pytest.raises(MMTLError):
        main(["train", "train.lr=.inf", "--debug"])


def test_a_bug_is_one_line_with_exit_1(monkeypatch, capsys) -> None:
    import mmtl.config

    def broken(*args, **kwargs):
        raise ValueError("something unexpected\nsecond line")

    monkeypatch.setattr(mmtl.config, "resolve_config", broken)  # what the CLI builds a config with
    assert main(["train"]) == 1
    _one_line_error(capsys, "internal error: ValueError: something unexpected second line (run with --debug")


def test_unreadable_shard_is_one_line(trained_run: tuple[Path, Path], tmp_path: Path, refuse_tar_reads,
                                      capsys) -> None:
    """Permission denied on a shard (simulated: the tests run as root, which reads any file)."""
    data, _ = trained_run
    refuse_tar_reads()
    assert main(["train", *micro_overrides(data, tmp_path / "run", steps=1)]) == 2
    _one_line_error(capsys, ".tar: permission denied")


class Payload:
    """Stands for a pickled object that would run code when loaded."""

    def __reduce__(self):
        return (print, ("this would have run",))


def test_resume_refuses_a_pickle_without_torchs_advice(trained_run: tuple[Path, Path], tmp_path: Path,
                                                        capsys) -> None:
    import shutil

    import torch

    data, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    latest = copy / "checkpoints" / (copy / "checkpoints" / "LATEST").read_text().strip()
    torch.save({"step": 3, "payload": Payload()}, latest / "train_state.pt")
    assert main(["train", *micro_overrides(data, copy, steps=4), "--resume", "latest"]) == 2
    err = _one_line_error(capsys, "refusing to load")
    assert "weights_only" not in err and "this would have run" not in capsys.readouterr().out


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374"),
    OSError(28, "No space left on device"),
])
def test_full_disk_during_a_checkpoint(trained_run: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys,
                                       failure: Exception) -> None:
    import mmtl.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", full)
    data, _ = trained_run
    run = tmp_path / "run"
    assert main(["train", *micro_overrides(data, run, steps=1)]) == 2
    _one_line_error(capsys, "no space left on the device while writing checkpoint")
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp dir left


# -- property-based: any argument list is handled (exit 0 or a one-line error), never a traceback ----
TRAIN_TOKENS = st.one_of(
    st.sampled_from(["--config", "--resume", "latest", "train.steps=3", "train.lr=.nan", "model.preset=tiny",
                     "tasks=[captioning]", "=", "a.b=", "--debu", "-x", "train.steps=", "data.path=", "seed=-1"]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.lr", "train.steps", "model.width", "x", "train..a",
                                                         "output_dir", "eval.threshold", "balancer.name"]),
              st.text(max_size=12)),
    st.text(max_size=16),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(TRAIN_TOKENS, max_size=5))
def test_any_train_arguments_exit_0_or_2_with_one_line(argv: list[str], tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    import mmtl.training.run

    capsys.readouterr()  # the fixtures live across hypothesis' examples: start from empty output
    monkeypatch.delenv("MMTL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mmtl.training.run, "train", lambda config, resume=None: SimpleNamespace(
        final_losses={}, seconds=0.0, checkpoint="c", run_dir=tmp_path / "none"))
    try:
        code = main(["train", *argv])
    except SystemExit as exc:  # argparse's own usage error
        assert exc.code == 2
        return
    except Exception:  # noqa: BLE001 - only --debug lets an error through, with its traceback
        assert "--debug" in argv
        return
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("mmtl: error: ") and err.count("\n") == 1
