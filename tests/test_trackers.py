"""train.loggers: TensorBoard, W&B (offline) and MLflow (local file store) get the run's numbers."""
from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path
from typing import Iterator

import pytest
import torch

import mmtl
from mmtl.cli import main
from mmtl.errors import MMTLError
from mmtl.training import trackers
from mmtl.training.logging import RunLogger
from tests.conftest import micro_overrides

TASKS = ("recognition", "captioning", "summarization")
# a run that logs every step, measures the gradient monitors, validates at its end and protects tasks
TRACKED = ["train.monitor_every=1", "train.eval_every=3", "validation.max_samples=16", "validation.protect=true"]


@pytest.fixture(scope="module")
def tracked(micro_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One micro run logged to TensorBoard and to every installed extra: W&B offline (its folder under
    ``wb/``) and MLflow in a local file store (``mlruns/``); returns the folder holding them."""
    root = tmp_path_factory.mktemp("tracked")
    extras = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is not None]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wb"), "WANDB_SILENT": "true", "WANDB_PROJECT": "mmtl-test",
           "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": "mmtl-test",
           "MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 asks for the opt-in to a local file store
    (root / "wb").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        config = mmtl.load_config(None, [*micro_overrides(micro_data, root / "run", steps=3), *TRACKED,
                                         f"train.loggers=[{','.join(['tensorboard', *extras])}]"])
        try:
            mmtl.train(config)
        finally:
            torch.set_num_threads(before)
        yield root


def assert_step_keys(keys_per_step: dict[int, set[str]]) -> None:
    """Every logged step has >= 10 keys, among them every task's loss and weight; validation and the
    gradient monitors are there too."""
    assert sorted(keys_per_step) == [1, 2, 3]
    for step, keys in keys_per_step.items():
        assert len(keys) >= 10, (step, sorted(keys))
        assert {f"loss/{t}" for t in TASKS} | {f"weight/{t}" for t in TASKS} <= keys, (step, sorted(keys))
    every = set().union(*keys_per_step.values())
    assert {f"grad_norm/{t}" for t in TASKS} <= every
    assert any(k.startswith("grad_cos/") for k in every)
    assert any(k.startswith("val/") for k in every)


def wandb_records(path: Path) -> list:
    """The protobuf records of a ``run-*.wandb`` file (a LevelDB-style log: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_records_every_task_loss_and_weight(tracked: Path) -> None:
    pytest.importorskip("wandb")
    assert (tracked / "run" / "tensorboard").is_dir()
    folders = list((tracked / "wb" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    keys_per_step: dict[int, set[str]] = {}
    tables = set()
    for record in wandb_records(next(folders[0].glob("run-*.wandb"))):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        step = int(items["_step"])
        keys_per_step.setdefault(step, set()).update(k for k in items if not k.startswith(("_", "verdicts/")))
        tables |= {k for k in items if k.startswith("verdicts/")}
    assert_step_keys(keys_per_step)
    assert tables  # the final verdict table
    table = json.loads(next((folders[0] / "files" / "media" / "table").glob("verdicts_*.table.json")).read_text())
    assert sorted(row[0] for row in table["data"]) == sorted(TASKS)


def test_mlflow_file_store_run_records_every_task_loss_and_weight(tracked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tracked / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("mmtl-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    keys_per_step: dict[int, set[str]] = {}
    for key in runs[0].data.metrics:
        for point in client.get_metric_history(run_id, key):
            keys_per_step.setdefault(point.step, set()).add(key)
    assert_step_keys(keys_per_step)
    assert runs[0].data.params["train.steps"] == "3"  # the config as parameters
    verdicts = Path(client.download_artifacts(run_id, "verdicts.md", str(tracked))).read_text()
    assert all(task in verdicts for task in TASKS) and "verdict" in verdicts


def test_a_missing_extra_is_one_line_naming_the_pip_command(micro_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = main(["train", *micro_overrides(micro_data, tmp_path / "run"), "train.loggers=[wandb]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'mmtl[wandb]'" in err
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(MMTLError, match="unknown logger 'neptune'"):
        trackers.check_loggers(["neptune"])


def test_a_tracker_that_cannot_start_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def __init__(self, run_dir, config, resume_id=None):
            raise RuntimeError("tracking server refused the connection\nmore detail")

    monkeypatch.setattr(trackers, "WandbTracker", Refusing)
    monkeypatch.setattr(trackers, "check_loggers", lambda names: list(names))
    with pytest.raises(MMTLError, match="wandb could not start a run .RuntimeError: tracking server refused"):
        RunLogger(tmp_path, ["tensorboard", "wandb"])


def test_jsonl_is_always_on_and_tensorboard_only_when_listed(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path / "a", [])
    logger.log(1, {"loss/x": 1.0, "warning": "text is kept in the JSONL only"})
    logger.close()
    assert json.loads((tmp_path / "a" / "log.jsonl").read_text())["warning"].startswith("text")
    assert not (tmp_path / "a" / "tensorboard").exists()
    RunLogger(tmp_path / "b", ["jsonl", "tensorboard"]).close()
    assert (tmp_path / "b" / "tensorboard").is_dir()
    assert mmtl.load_config(None, []).train.loggers == ["tensorboard"]


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def log(self, step, scalars):
            raise ConnectionError("tracker server down")

        def close(self, failed=False):
            pass

    logger = RunLogger(tmp_path, [])
    logger.trackers.append(Broken())
    logger.log(1, {"loss/x": 1.0})
    logger.log(2, {"loss/x": 0.5})
    logger.close()
    assert logger.trackers == [] and len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
    assert "tracker server down" in caplog.text


def test_a_resumed_run_continues_the_same_tracker_runs(micro_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    extras = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is not None]
    if not extras:
        pytest.skip("neither wandb nor mlflow is installed (pip install 'mmtl[wandb,mlflow]')")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "mmtl-test", "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
                       "MLFLOW_EXPERIMENT_NAME": "mmtl-resume", "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wb").mkdir()
    run = tmp_path / "run"
    overrides = [*micro_overrides(micro_data, run, steps=2), f"train.loggers=[{','.join(extras)}]"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mmtl.train(mmtl.load_config(None, overrides))
        ids = json.loads((run / trackers.IDS_FILE).read_text())
        assert set(ids) == set(extras)
        mmtl.train(mmtl.load_config(None, [*overrides, "train.steps=4"]), resume="latest")
    finally:
        torch.set_num_threads(before)
    assert json.loads((run / trackers.IDS_FILE).read_text()) == ids
    if "mlflow" in extras:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name("mmtl-resume").experiment_id])
        assert [r.info.run_id for r in runs] == [ids["mlflow"]] and runs[0].info.status == "FINISHED"
        assert sorted(p.step for p in client.get_metric_history(ids["mlflow"], "loss/recognition")) == [1, 2, 3, 4]
    if "wandb" in extras:
        folders = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
        # Two runs started within one second share a timestamp; wandb then suffixes the second folder ("-1").
        same_run = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(ids['wandb'])}(-\d+)?")
        assert len(folders) == 2 and all(same_run.fullmatch(folder.name) for folder in folders)
        steps = {int(item.value_json) for folder in folders for record in wandb_records(next(folder.glob("run-*.wandb")))
                 if record.WhichOneof("record_type") == "history" for item in record.history.item
                 if (item.key or "/".join(item.nested_key)) == "_step"}
        assert steps == {1, 2, 3, 4}
