"""Whole shards kept in memory after their first read, so later epochs skip the tar parsing.

Reading a tar (webdataset's member-by-member parse in Python) is about half of the training data path
on small sets that are read again every epoch. :class:`ShardCache` holds each shard's samples (after
the field mapping, as the stream yields them) once the shard was read from start to end without a
single error, and serves later reads from memory, in the same order: the stream, its resume position
and the per-sample corrupt counts (those are judged when decoding, every epoch) do not change.

Integrity: a shard is first read whole into a private list; only a read that ends without an error is
kept. A shard that fails anywhere (unreadable, truncated, a damaged member) is read again the ordinary
way through the stream's own error handler, so its samples, warnings and errors are exactly those of a
stream without the cache; it is never held. ``pipe:`` sources are not held (their size is unknown and a
command's output may change).

Memory: the shard's file size is claimed from a :class:`CacheBudget` before anything is read, so a shard
that cannot fit is not even read whole; once read, what holding its samples would take (each dict and its
values, measured) is claimed too when it is more than the file (a field mapping may copy a member into the
``json``) before the samples are kept. A set that does not fit is not held at all.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

from data_pipelines.cachebudget import CacheBudget
from data_pipelines.fieldmap import Mapping
from data_pipelines.pipes import is_pipe
from data_pipelines.shardsets import contract_samples

Handler = Callable[[BaseException], bool]
Sample = dict[str, Any]


class ShardCache:
    """Samples of whole shards by URL, held within ``budget`` bytes (0: off); one per source and worker."""

    def __init__(self, budget: int) -> None:
        self.budget = CacheBudget(budget)
        self.shards: dict[str, list[Sample]] = {}
        self.uncacheable: set[str] = set()  # shards whose first read failed: always read from the disk

    def samples(self, url: str, mapping: Mapping | None, handler: Handler) -> Iterator[Sample]:
        """The samples of shard ``url`` in order (mapped into the contract with ``mapping``, as
        :func:`data_pipelines.shardsets.contract_samples` does), from memory when held; errors reach
        ``handler`` exactly as they would without the cache. Each sample is a fresh dict."""
        held = self.shards.get(url)
        if held is None:
            held = self._read_whole(url, mapping)
        if held is None:
            return iter(contract_samples([url], mapping, handler))
        return (dict(sample) for sample in held)

    def _read_whole(self, url: str, mapping: Mapping | None) -> list[Sample] | None:
        """Read ``url`` to its end and hold its samples when they fit; None when it cannot be read whole
        without an error (or not claimed: the ordinary read follows)."""
        if url in self.uncacheable or not self.budget.on:
            return None
        size = _file_size(url)
        if size is None:
            return None
        if not self.budget.claim(size):  # the set does not fit: hold nothing at all
            self.shards.clear()
            return None
        errors: list[BaseException] = []

        def stop(error: BaseException) -> bool:
            errors.append(error)
            return False  # stop at the first error: the shard is read again through the stream's handler

        try:
            samples = list(contract_samples([url], mapping, stop))
        except Exception:  # noqa: BLE001  read again below, where it fails exactly as without the cache
            samples, errors = [], [RuntimeError(url)]
        if errors:
            self.budget.release(size)
            self.uncacheable.add(url)
            return None
        extra = held_bytes(samples) - size
        if extra > 0 and not self.budget.claim(extra):  # read right, but the set does not fit: served once
            self.shards.clear()
            return samples
        self.shards[url] = samples
        return samples


def held_bytes(samples: list[Sample]) -> int:
    """Bytes that holding ``samples`` takes: each dict and each of its values (the member names are shared)."""
    return sum(sys.getsizeof(sample) + sum(sys.getsizeof(v) for v in sample.values()) for sample in samples)


def _file_size(url: str) -> int | None:
    """Bytes of a local shard file; None for a ``pipe:`` or a file that cannot be seen (the ordinary
    read then reports why)."""
    if is_pipe(url):
        return None
    try:
        return os.stat(url.removeprefix("file://")).st_size
    except OSError:
        return None
