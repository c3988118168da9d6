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


# -- reading other people's small files: sizes checked before anything is read --------------------------------
def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk (reading it whole would allocate ``size`` bytes)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _peak_allocation(call) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_read_bounded_returns_a_small_file_and_refuses_a_large_one_unread(tmp_path: Path) -> None:
    from mmtl.files import read_bounded

    small = tmp_path / "small.json"
    small.write_bytes(b'{"a": 1}')
    assert read_bounded(small, 8) == b'{"a": 1}'
    with pytest.raises(OSError, match="larger than 7 bytes"):
        read_bounded(small, 7)
    big = _sparse(tmp_path / "big.json", 64 * 2**20)
    assert _peak_allocation(lambda: pytest.raises(OSError, read_bounded, big, 2**20)) < 2**20


def test_read_bounded_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    from mmtl.files import read_bounded

    fifo = tmp_path / "trackers.json"
    os.mkfifo(fifo)  # nobody writes it: a plain open() for reading would wait forever
    with pytest.raises(OSError, match="not a regular file"):
        read_bounded(fifo, 1024)


def test_shared_run_files_of_any_size_are_refused_before_they_are_read(tmp_path: Path) -> None:
    from mmtl.errors import MMTLError
    from mmtl.evaluation.baselines import read_baselines
    from mmtl.checkpoint import resolve_checkpoint
    from mmtl.training.trackers import IDS_FILE, read_run_ids

    size = 64 * 2**20
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _sparse(run / IDS_FILE, size)
    _sparse(run / "checkpoints" / LATEST, size)
    baselines = _sparse(tmp_path / "baselines.json", size)

    assert _peak_allocation(lambda: read_run_ids(run)) < 2**20
    assert read_run_ids(run) == {}
    for read in (lambda: read_baselines(baselines), lambda: resolve_checkpoint(run)):
        with pytest.raises(MMTLError, match="larger than"):
            read()
        assert _peak_allocation(lambda: pytest.raises(MMTLError, read)) < 2**20


def test_a_checkpoints_config_and_metadata_of_any_size_are_refused_before_they_are_read(tmp_path: Path) -> None:
    from mmtl.checkpoint import read_meta
    from mmtl.config.budget import MAX_META_BYTES
    from mmtl.config.parsing import read_yaml_tree
    from mmtl.errors import ConfigError, MMTLError

    config = _sparse(tmp_path / "config.yaml", 64 * 2**20)
    _sparse(tmp_path / "meta.json", MAX_META_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml_tree(config, follow_includes=False)
    with pytest.raises(MMTLError, match="larger than"):
        read_meta(tmp_path)
    assert _peak_allocation(lambda: pytest.raises(MMTLError, read_meta, tmp_path)) < 2**20


def test_a_plain_name_is_one_entry_of_its_folder() -> None:
    from mmtl.files import is_plain_name

    assert is_plain_name("step-00000100")
    for name in ("", ".", "..", "a/b", "../step-1", "/etc", "a\\b", "..\\..\\x"):
        assert not is_plain_name(name), name
