"""mmtl.files: small files replaced in one rename, never written through a link, never left half-written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmtl.checkpoint import LATEST, remove_stale_temp
from mmtl.files import temp_prefix, write_atomically, write_text_atomically


def test_a_link_at_the_path_is_replaced_and_its_target_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "run" / "trackers.json"
    target.parent.mkdir()
    target.symlink_to(victim)
    write_text_atomically(target, "{}")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_text() == "{}"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "LATEST"
    target.write_text("step-00000001")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("step-000")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_fail)
    assert target.read_text() == "step-00000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST"]


def test_durable_writes_sync_the_file_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src))), real_replace(src, dst))[1])
    write_text_atomically(tmp_path / ".cache.json", "x")
    (sync_file, file), (replace, renamed), (sync_dir, folder) = events
    assert (sync_file, replace, sync_dir) == ("sync", "replace", "sync")
    assert file == renamed and Path(file).name.startswith(temp_prefix(tmp_path / ".cache.json"))
    assert folder == str(tmp_path)
    events.clear()
    write_text_atomically(tmp_path / "rebuildable.json", "x", durable=False)
    assert [kind for kind, _ in events] == ["replace"]


def test_resuming_removes_pointer_temp_files_an_interrupted_save_left(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    leftover = root / f"{temp_prefix(root / LATEST)}abc123.tmp"
    leftover.write_text("step-000")
    (root / LATEST).write_text("step-00000001")
    assert remove_stale_temp(root) == [leftover]
    assert sorted(p.name for p in root.iterdir()) == [LATEST]
