"""Files written so that a crash, a power cut or a link planted in the folder cannot corrupt them.

- :func:`write_atomically`: a file is written under a fresh temporary name in its own folder
  (created exclusively, so a link planted there is never written through), flushed to disk, then
  renamed onto its path: readers see the old file or the new one, never a part. A link at the path
  itself is replaced, its target left alone.
- :func:`sync_path` and :func:`sync_tree`: fsync a file, a folder or a whole tree before a rename.
- :func:`read_bounded`: a small file of someone else's (a shared run or checkpoint folder) read only
  after its size is checked, and only if it is a regular file.
"""
from __future__ import annotations

import errno
import os
import stat
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


MAX_POINTER_BYTES = 4096  # a pointer file (a run's LATEST) names one entry of its folder


def read_pointer(path: Path) -> str:
    """The name a pointer file holds (e.g. ``checkpoints/LATEST``), read by :func:`read_bounded` and stripped;
    whether it is a plain name is the caller's check (:func:`is_plain_name`). OSError / UnicodeDecodeError
    when it cannot be read as one."""
    return read_bounded(path, MAX_POINTER_BYTES).decode("utf-8").strip()


def is_plain_name(name: str) -> bool:
    """Whether ``name`` (read from a file, e.g. a ``LATEST`` pointer) names one entry of a folder: not empty,
    not ``.`` or ``..``, no path separator of either kind."""
    return bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name


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


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, read only when it holds at most ``max_bytes``.

    Raises OSError (``strerror`` says why) for a larger file, before reading it, and for anything but a
    regular file: a FIFO is opened without blocking and refused, a device is never read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        data = b""
        # one byte past the limit is asked for: the file may have grown since fstat
        while len(data) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data
