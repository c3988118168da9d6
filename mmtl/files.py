"""Files written so that a crash, a power cut or a link planted in the folder cannot corrupt them.

- :func:`write_atomically`: a file is written under a fresh temporary name in its own folder
  (created exclusively, so a link planted there is never written through), flushed to disk, then
  renamed onto its path: readers see the old file or the new one, never a part. A link at the path
  itself is replaced, its target left alone.
- :func:`sync_path` and :func:`sync_tree`: fsync a file, a folder or a whole tree before a rename.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def sync_path(path: Path) -> None:
    """fsync one file or directory, so that a rename after it cannot land before its contents do."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file under ``root``, then ``root`` itself (its entries): a power cut after the
    rename must not leave a checkpoint whose files are empty or short."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sync_path(path)
    sync_path(root)


def write_atomically(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """Put the file that ``write(temporary_path)`` writes at ``path`` in one rename.

    ``durable``: fsync the file before the rename and the folder after it (a checkpoint's pointer
    must survive a power cut; a cache that can be rebuilt need not pay for it). The temporary file
    is removed when anything fails, and the error is raised.
    """
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared run folder's files from its group
        if durable:
            sync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_path(path.parent)


def temp_prefix(path: Path) -> str:
    """The hidden name that :func:`write_atomically`'s temporary files for ``path`` start with."""
    return f".{path.name.lstrip('.')}."


def write_text_atomically(path: Path, text: str, durable: bool = True) -> None:
    """:func:`write_atomically` for a UTF-8 text file."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable)
