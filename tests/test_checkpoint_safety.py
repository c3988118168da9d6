"""Checkpoint files under hostile conditions (issue #17): pointers confined to checkpoints/, stale
temp directories removed, non-finite weights never written, replacements atomic."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.checkpoint import (
    LATEST, MODEL_FILE, load_train_state, resolve_checkpoint, save_run_checkpoint, write_checkpoint,
)


def _save(run: Path, step: int, model: torch.nn.Module | None = None) -> Path:
    model = model or torch.nn.Linear(3, 2)
    return save_run_checkpoint(run, step, keep=3, model=model, meta={"step": step}, config=resolve_config({}),
                               train_state={"step": step})


@pytest.mark.parametrize("pointer", ["../../elsewhere", "../elsewhere", "/abs/elsewhere", "..", ".", "step-1/../.."])
def test_latest_cannot_leave_checkpoints(tmp_path: Path, pointer: str) -> None:
    run = tmp_path / "run"
    _save(run, 1)
    elsewhere = tmp_path / "elsewhere"  # a valid checkpoint outside the run: must not be loaded
    write_checkpoint(elsewhere, model=torch.nn.Linear(3, 2), meta={}, config=resolve_config({}))
    (run / "checkpoints" / LATEST).write_text(pointer)
    with pytest.raises(MMTLError, match="points outside"):
        resolve_checkpoint(run)


def test_latest_cannot_follow_a_link_out(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 1)
    elsewhere = tmp_path / "elsewhere"
    write_checkpoint(elsewhere, model=torch.nn.Linear(3, 2), meta={}, config=resolve_config({}))
    os.symlink(elsewhere, run / "checkpoints" / "step-link")
    (run / "checkpoints" / LATEST).write_text("step-link")
    with pytest.raises(MMTLError, match="points outside"):
        resolve_checkpoint(run)
    (run / "checkpoints" / LATEST).write_text("step-00000001")
    assert resolve_checkpoint(run) == run / "checkpoints" / "step-00000001"


def test_stale_temp_dirs_are_removed_on_resume_and_on_save(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _save(run, 1)
    root = run / "checkpoints"
    stale = [root / ".step-00000002.k3j2", root / ".best.x8a"]
    for path in stale:
        path.mkdir()
        (path / MODEL_FILE).write_bytes(b"\0" * 1000)
    assert load_train_state(first) == {"step": 1}
    assert not any(p.exists() for p in stale)
    stale[0].mkdir()
    _save(run, 2)
    assert not stale[0].exists() and (root / "step-00000002").is_dir()


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 1)
    broken = torch.nn.Linear(3, 2)
    with torch.no_grad():
        broken.weight[0, 0] = float("inf")
        broken.bias[1] = float("nan")
    with pytest.raises(MMTLError, match="2 of 8 weights are NaN or infinite.*lower train.lr"):
        _save(run, 2, broken)
    root = run / "checkpoints"
    assert (root / LATEST).read_text() == "step-00000001"
    assert sorted(p.name for p in root.iterdir()) == [LATEST, "step-00000001"]


def test_rewriting_a_checkpoint_replaces_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "best"
    for value in (1.0, 2.0):
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, value)
        write_checkpoint(target, model=model, meta={"v": value}, config=resolve_config({}))
    assert sorted(p.name for p in target.parent.iterdir()) == ["best"]
    assert '"v": 2.0' in (target / "meta.json").read_text()


def test_every_file_is_synced_before_the_renames_that_publish_it(tmp_path: Path, monkeypatch) -> None:
    """A power cut after a rename must not publish a checkpoint (or LATEST) whose data never reached
    the disk: each file is fsynced before the rename that makes it visible."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src))), real_replace(src, dst))[1])
    _save(tmp_path / "run", 1)
    root = tmp_path / "run" / "checkpoints"
    renamed = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    assert len(renamed) == 2  # the checkpoint directory, then LATEST
    checkpoint_files = sorted(p.name for p in (root / "step-00000001").iterdir())
    synced_first = {Path(path).name for kind, path in events[:renamed[0]] if kind == "sync"}
    assert set(checkpoint_files) <= synced_first and MODEL_FILE in checkpoint_files
    assert any(Path(path).name.startswith(f".{LATEST}.") and path.endswith(".tmp")
               for kind, path in events[renamed[0]:renamed[1]] if kind == "sync")
    assert events[-1] == ("sync", str(root))  # the directory entry of LATEST itself
