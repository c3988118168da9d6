"""The scan cache of a shard set without ``dataset.json``: written safely beside shared shards, read as untrusted.

A shard folder is often shared by several users, so the cache file beside it is read as something
anyone could have written:

* written to a temporary file in the same folder, then renamed into place: a link at the cache path
  is replaced, never written through;
* read without following a link, and checked against a schema (strict types, no extra keys), and
  its shard lists against the shards themselves: a cache that fails is ignored with one warning and
  the set is scanned again;
* its key covers each shard's path, size, modification time in nanoseconds, inode and device, so a
  shard replaced by another of the same size with its time reset is scanned again.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmtl.files import write_text_atomically

SCAN_VERSION = 2  # 2: the key covers inode and device
CACHE_PREFIX = ".mmtl-scan-"
TEXTS_PREFIX = ".mmtl-texts-"  # the cached texts of a split (data_pipelines.profile), beside the scan
MAX_CACHE_BYTES = 64 * 2**20  # a cache larger than this is not one mmtl wrote

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SplitScan(_Strict):
    """Counts of one split."""

    samples: int = Field(ge=0)
    shards: list[str]
    tasks: dict[str, int]
    corrupt: int = Field(ge=0)


class ScanInfo(_Strict):
    """``dataset.json``-shaped info of a scanned shard set."""

    name: str
    splits: dict[str, SplitScan]
    classes: list[str]
    label_mode: Literal["multi", "single"]
    written_by: dict[str, Any]
    any_split: bool


class ScanCache(_Strict):
    """The cache file: the key it was written for and the info."""

    key: str
    info: ScanInfo


class TextScan(_Strict):
    """The texts of a split's first annotations (``data_pipelines.profile.TextProfile``)."""

    words: list[str]
    document_tokens: list[int]


class TextCache(_Strict):
    """The cache file of a split's texts: the key it was written for and the texts."""

    key: str
    info: TextScan


def cache_key(reference: str, mapping_items: list[str], splits: dict[str, list[str]], piped: bool) -> str:
    """The key of a scan: reference, mapping, and every shard's path, size, mtime (ns), inode and device."""
    # a pipe: command's relative paths mean another thing in another folder
    parts: list[Any] = [SCAN_VERSION, reference, mapping_items, os.getcwd() if piped else ""]
    for urls in splits.values():
        for url in urls:
            local = Path(url.removeprefix("file://"))
            try:
                stat = None if url.startswith("pipe:") else local.stat()
            except OSError:
                stat = None
            parts.append([url, *((stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev) if stat else ())])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_paths(home: Path | None, key: str, prefix: str = CACHE_PREFIX) -> list[Path]:
    """Beside the shards first (when they share a folder, named ``prefix`` + key), else the user's cache folder."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmtl" / "scans"
    paths = [cache_home / f"{key[:24]}.json"]
    if home is not None:
        paths.insert(0, home / f"{prefix}{key[:12]}.json")
    return paths


def read_cache(path: Path, key: str, splits: dict[str, list[str]]) -> dict[str, Any] | None:
    """The info cached at ``path`` for ``key``, or None (one warning when a file is there but is not a
    valid cache of these shards: a link, a forged or damaged file, a stale key)."""
    cache = _read_valid(path, key, ScanCache)
    if cache is None:
        return None
    if any(cache.info.splits.get(split) is None or cache.info.splits[split].shards != urls
           for split, urls in splits.items()) or set(cache.info.splits) != set(splits):
        return _ignored(path, "its shard lists differ from the shards")
    return cache.info.model_dump()


def read_texts(path: Path, key: str) -> dict[str, Any] | None:
    """The texts cached at ``path`` for ``key`` (see :class:`TextScan`), or None, as :func:`read_cache`."""
    cache = _read_valid(path, key, TextCache)
    return None if cache is None else cache.info.model_dump()


def _read_valid(path: Path, key: str, schema: type[ScanCache] | type[TextCache]) -> Any:
    """The cache file at ``path`` checked against ``schema`` and ``key``, read without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "it is a link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        return _ignored(path, reason)
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_CACHE_BYTES + 1)
    except OSError as exc:
        return _ignored(path, exc.strerror or str(exc))
    if len(data) > MAX_CACHE_BYTES:
        return _ignored(path, f"larger than {MAX_CACHE_BYTES // 2**20} MiB")
    try:
        cache = schema.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        return _ignored(path, f"not a scan cache ({where}: {first['msg']})")
    if cache.key != key:
        return _ignored(path, "written for other shards or an older version of them")
    return cache


def _ignored(path: Path, reason: str) -> None:
    log.warning("ignoring the scan cache %s (%s); scanning the shards again", path, reason)
    return None


def write_cache(path: Path, key: str, info: dict[str, Any]) -> bool:
    """Write the cache atomically: a temporary file in the same folder renamed onto ``path`` (a link
    there is replaced, its target left alone). False when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a cache is rebuilt when lost: no fsync
        write_text_atomically(path, json.dumps({"key": key, "info": info}, indent=1), durable=False)
        return True
    except OSError:
        return False
