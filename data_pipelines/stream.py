"""The raw-sample stream of one loader worker: shards -> samples -> mixed -> grouped into batches.

Everything here happens before decoding and is a pure function of the seed, the rank and the
worker, which is what makes an exact resume cheap: a batch is a *group* of ``batch_size`` raw
samples, so skipping the first k batches only drops groups (reading their bytes, decoding none).

Each (rank, worker) pair is a *slot*; slot = rank * workers + worker of ``world_size * workers``.

* ``resampled`` mode: shards drawn with replacement forever. With at least as many shards as slots
  each slot draws from its own disjoint subset (shards[slot::slots]); with fewer, every slot draws
  from all shards with its own seed (different streams, but a sample may come up on several ranks
  close together).
* ``epoch`` mode: epoch e orders the shards with seed + e (the same order on every slot), slot s
  reads shards[s::slots] of that order (with fewer shards than slots: every slot reads all of them
  and keeps samples i with i % slots == s), through a sample shuffle buffer drained at the end of
  the epoch. Every sample is seen exactly once per epoch over all ranks and workers.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import webdataset as wds

from data_pipelines.mixing import MixPlan, interleave
from data_pipelines.sample import TEXT_INPUT_FIELD
from data_pipelines.shardcache import ShardCache
from data_pipelines.shardsets import contract_samples, unreadable
from mmtl.errors import MMTLError

MODES = ("resampled", "epoch")
Group = list[tuple[int, dict[str, Any]]]  # (source index, raw sample) pairs that make one batch


def sub_seed(seed: int, *parts: int) -> int:
    """A seed for one part of the stream; ``seed`` itself when every part is 0 (the single-worker default)."""
    if not any(parts):
        return seed
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world size, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise MMTLError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    return rank, world_size


def shard_samples(urls: Iterable[str], mapping: dict[str, list[str]] | None = None,
                  handler: Callable[[BaseException], bool] = wds.warn_and_continue,
                  cache: ShardCache | None = None) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples of ``urls`` in order (unreadable shards and tar members go to ``handler``,
    which by default warns and skips them), turned into the sample contract with ``mapping`` for
    shards without dataset.json; shard by shard through ``cache`` when given (the same samples)."""
    if cache is None:
        return iter(contract_samples(list(urls), mapping, handler))
    return itertools.chain.from_iterable(cache.samples(url, mapping, handler) for url in urls)


class ShardErrors:
    """A webdataset handler that skips unreadable shards and tar members, keeps the errors, and warns
    about them only once the stream has shown it can read something: a stream that reads nothing at
    all then fails with one message saying why, instead of a warning per shard before it."""

    def __init__(self) -> None:
        self.last: BaseException | None = None
        self.pending: list[BaseException] = []

    def __call__(self, error: BaseException) -> bool:
        self.last = error
        self.pending.append(error)
        return True  # skip it and go on

    def flush(self) -> None:
        """Warn about the errors kept so far (the stream is readable, so they are worth a warning)."""
        for error in self.pending:
            wds.warn_and_continue(error)
        self.pending.clear()


@dataclass
class Slot:
    """Where this stream runs: rank and loader worker, and their flat index among all of them."""

    rank: int
    world_size: int
    worker: int
    workers: int

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.workers

    @classmethod
    def current(cls, rank: int, world_size: int, start_batch: int = 0) -> "Slot":
        """The slot of the calling process (a DataLoader worker, or the main process as worker 0 of 1).

        A DataLoader takes its j-th batch from worker j % workers; started at batch k, its worker w
        yields the global batches k + w, k + w + workers, ..., which worker (k + w) % workers of an
        uninterrupted loader made: so that is the worker it plays.
        """
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        return cls(rank, world_size, ((info.id if info else 0) + start_batch) % workers, workers)


@dataclass
class StreamSpec:
    """Everything that determines the raw stream (picklable: it travels to the workers)."""

    shards: list[list[str]]  # per source
    plan: MixPlan
    batch_size: int
    mode: str = "resampled"
    shuffle: bool = True  # shard and sample shuffling (off: each shard in listed order, once)
    shuffle_buffer: int = 1000
    seed: int = 0
    epochs: int | None = None  # epoch mode: passes before the stream ends (None: forever)
    length_buckets: int = 0  # >0: group by document length within a buffer of this many batches
    rank: int = 0
    world_size: int = 1
    # per source: the field mapping of a shard set without dataset.json (None: native shards)
    mappings: list[dict[str, list[str]] | None] | None = None
    # shards read at once (each sample from a random one), so class-sorted shards still mix; 1: one by one
    shard_interleave: int = 4
    # samples in the shuffle buffer before the first is drawn (None: the whole buffer)
    initial_fill: int | None = None
    # bytes of whole shards each source keeps in memory on each slot for later epochs (ShardCache; 0: off)
    shard_cache_bytes: int = 0


def source_samples(spec: StreamSpec, source: int, slot: Slot) -> Iterator[dict[str, Any]]:
    """The raw samples of one source on one slot (infinite, except in epoch mode with ``epochs``)."""
    urls, seed = spec.shards[source], spec.seed
    mapping = spec.mappings[source] if spec.mappings else None
    initial = spec.shuffle_buffer if spec.initial_fill is None else min(spec.shuffle_buffer, spec.initial_fill)
    width = spec.shard_interleave if spec.shuffle else 1
    cache = ShardCache(spec.shard_cache_bytes) if spec.shard_cache_bytes > 0 else None  # lives for every epoch
    if spec.mode == "resampled":
        subset = urls[slot.index::slot.count] if len(urls) >= slot.count else urls
        # both seeded: webdataset's defaults mix in the time and pid, and a run must be reproducible
        shards = wds.ResampledShards(subset, seed=sub_seed(seed, source), deterministic=True,
                                     worker_seed=lambda: slot.rank * 1000 + slot.worker)
        # every shard of the subset drawn twice over without a sample: none is readable
        samples = interleaved_shards((s["url"] for s in shards), width, mapping,
                                     random.Random(sub_seed(seed, slot.index, source, 4)),
                                     patience=2 * len(subset) + width, cache=cache)
        yield from wds.shuffle(spec.shuffle_buffer, initial=initial, seed=sub_seed(seed, slot.index, source))(samples)
        return
    for epoch in itertools.count() if spec.epochs is None else range(spec.epochs):
        order = list(urls)
        if spec.shuffle:
            random.Random(sub_seed(seed + epoch, source)).shuffle(order)
        if len(order) >= slot.count:
            samples = interleaved_shards(iter(order[slot.index::slot.count]), width, mapping,
                                         random.Random(sub_seed(seed + epoch, slot.index, source, 4)), cache=cache)
        else:
            every = shard_samples(order, mapping, cache=cache)
            samples = (s for i, s in enumerate(every) if i % slot.count == slot.index)
        if spec.shuffle and spec.shuffle_buffer > 1:
            samples = wds.shuffle(spec.shuffle_buffer, initial=initial,
                                  seed=sub_seed(seed + epoch, slot.index, source, 1))(samples)
        seen = 0
        for sample in samples:
            seen += 1
            yield sample
        if not seen and spec.epochs is None:  # an empty pass would repeat forever without yielding
            raise MMTLError(f"source {source} ({urls[0]} ...) has no samples for rank {slot.rank} worker "
                            f"{slot.worker}: fewer samples than ranks x workers")


def interleaved_shards(urls: Iterator[str], width: int, mapping: dict[str, list[str]] | None,
                       rng: random.Random, patience: int | None = None,
                       cache: ShardCache | None = None) -> Iterator[dict[str, Any]]:
    """Read ``width`` shards at once, each sample from a randomly chosen open one.

    A shard written in class order then still feeds the shuffle buffer samples of ``width`` shards'
    classes; a finished shard is replaced by the next URL. ``width`` 1 reads the shards one by one.
    ``patience``: after this many shards in a row without one readable sample, stop with an error
    naming the last one (resampled streams would otherwise draw unreadable shards for ever).
    ``cache``: whole shards kept in memory after their first read (the same samples, see ShardCache).
    """
    errors = ShardErrors()
    opened = list(itertools.islice(urls, max(width, 1)))
    open_shards = [shard_samples([url], mapping, errors, cache) for url in opened]
    yielded = [False] * len(open_shards)
    empty_in_a_row = 0
    while open_shards:
        index = rng.randrange(len(open_shards)) if len(open_shards) > 1 else 0
        sample = next(open_shards[index], None)
        if sample is not None:
            yielded[index], empty_in_a_row = True, 0
            if errors.pending:
                errors.flush()
            yield sample
            continue
        empty_in_a_row = 0 if yielded[index] else empty_in_a_row + 1
        if patience is not None and empty_in_a_row >= patience:
            raise MMTLError(f"no sample could be read from {empty_in_a_row} shards in a row; last "
                            f"{unreadable(opened[index], errors.last)}")
        url = next(urls, None)
        if url is None:
            for items in (open_shards, yielded, opened):
                items.pop(index)
        else:
            open_shards[index], yielded[index], opened[index] = shard_samples([url], mapping, errors, cache), False, url


def document_length(raw: dict[str, Any]) -> int:
    """Characters of a raw sample's text input (0 when it has none or its json is unreadable)."""
    try:
        document = json.loads(raw.get("json") or b"{}").get(TEXT_INPUT_FIELD)
    except (ValueError, AttributeError):
        return 0
    return len(document) if isinstance(document, str) else 0


def group(items: Iterable[tuple[int, dict[str, Any]]], batch_size: int, buckets: int,
          rng: random.Random) -> Iterator[Group]:
    """Cut a stream into groups of ``batch_size`` (the last one may be short).

    ``buckets`` > 0: fill a buffer of ``buckets`` groups, sort it by document length, cut it into
    groups and emit them in a random order, so a batch holds documents of similar length and pads
    less. No sample is dropped or repeated.
    """
    if buckets <= 0:
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, batch_size)):
            yield chunk
        return
    buffer: Group = []
    for item in items:
        buffer.append(item)
        if len(buffer) == buckets * batch_size:
            yield from _bucketed(buffer, batch_size, rng)
            buffer = []
    if buffer:
        yield from _bucketed(buffer, batch_size, rng)


def _bucketed(buffer: Group, batch_size: int, rng: random.Random) -> Iterator[Group]:
    ordered = sorted(buffer, key=lambda item: document_length(item[1]))
    chunks = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(chunks)
    return iter(chunks)


def raw_groups(spec: StreamSpec, slot: Slot) -> Iterator[Group]:
    """The groups (future batches) of one slot, mixed across sources as ``spec.plan`` says."""
    streams = [source_samples(spec, s, slot) for s in range(len(spec.shards))]
    bucket_rng = random.Random(sub_seed(spec.seed, slot.index, 0, 2))
    if len(streams) == 1:  # one source: no draws (keeps the single-source stream as it always was)
        return group(((0, raw) for raw in streams[0]), spec.batch_size, spec.length_buckets, bucket_rng)
    if spec.plan.strategy == "round_robin":
        per_source = [group(((s, raw) for raw in stream), spec.batch_size, spec.length_buckets, bucket_rng)
                      for s, stream in enumerate(streams)]
        return _round_robin(per_source, slot)
    rng = random.Random(sub_seed(spec.seed, slot.index, 0, 3))
    return group(interleave(streams, spec.plan.probabilities, rng), spec.batch_size, spec.length_buckets, bucket_rng)


def _round_robin(per_source: list[Iterator[Group]], slot: Slot) -> Iterator[Group]:
    """Global batch i comes from source i % sources; this worker makes batches worker, worker + workers, ..."""
    live = list(range(len(per_source)))
    for j in itertools.count():
        if not live:
            return
        wanted = (j * slot.workers + slot.worker) % len(per_source)
        # a finished finite source hands its turns to the next live one
        source = next((s for s in live if s >= wanted), live[0])
        chunk = next(per_source[source], None)
        if chunk is None:
            live.remove(source)
            continue
        yield chunk


def skipped_groups(start_batch: int, slot: Slot) -> int:
    """How many of its first groups this worker skips so the loader starts at batch ``start_batch``.

    Worker w of an uninterrupted loader makes the batches w, w + workers, ... (a DataLoader over an
    iterable dataset takes them round robin, in order).
    """
    return max(0, -(-(start_batch - slot.worker) // slot.workers))


class StreamDataset(torch.utils.data.IterableDataset):
    """Raw groups of this worker's slot -> (skip the first ones) -> decoded batches.

    ``decoders[source]`` turns raw samples into examples and has ``advance(raw)``, which keeps its
    random state as if it had decoded the sample; ``to_batches(groups, decoders)`` yields batches.
    """

    def __init__(self, spec: StreamSpec, decoders: Sequence[Any], to_batches: Callable[..., Iterator[Any]],
                 start_batch: int = 0) -> None:
        super().__init__()
        self.spec, self.decoders, self.to_batches, self.start_batch = spec, list(decoders), to_batches, start_batch

    def __iter__(self) -> Iterator[Any]:
        slot = Slot.current(self.spec.rank, self.spec.world_size, self.start_batch)
        # each slot decodes with its own random choices (which caption is the target); slot 0 keeps the seed
        decoders = [replace(d, seed=sub_seed(d.seed, slot.index)) for d in self.decoders]
        groups = raw_groups(self.spec, slot)
        for chunk in itertools.islice(groups, skipped_groups(self.start_batch, slot)):
            for source, raw in chunk:  # read, not decoded
                decoders[source].advance(raw)
        return self.to_batches(groups, decoders)
