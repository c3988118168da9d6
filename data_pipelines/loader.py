"""Streaming loader: webdataset shards -> decoded samples -> multi-task batches.

One sample feeds every task it has annotations for, so an image is decoded and encoded once
however many tasks use it. Tasks turn annotations into targets themselves; the loader never
looks at a task's name.

Corrupt samples (see ``data_pipelines.transforms.CORRUPT_REASONS``) are skipped in the workers,
logged with their key and shard, and counted per reason on the next batch (``Batch.skipped``);
``loader.corrupt`` sums them in the main process and stops a run past ``max_corrupt_fraction``.
"""
from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import webdataset as wds

from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD
from data_pipelines.shards import split_shards
from data_pipelines.transforms import DEFAULT_MAX_PIXELS, CorruptSampleError, image_tensor, parse_annotation
from mmtl.errors import MMTLError
from mmtl.text import PAD, Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One decoded sample."""

    key: str
    image: torch.Tensor | None
    text: list[int]
    targets: dict[str, Any]
    annotation: dict[str, Any]


@dataclass
class Batch:
    """A multi-task batch. ``targets[task]`` holds that task's tensors and ``index``: its rows."""

    keys: list[str]
    image: torch.Tensor  # (B, 3, H, W) uint8
    has_image: torch.Tensor  # (B,) bool
    text: torch.Tensor  # (B, L) long, PAD-padded; L >= 1
    targets: dict[str, dict[str, torch.Tensor]]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    # corrupt samples dropped since the previous batch of the same worker: reason -> count and
    # shard -> count (they travel with the batch because the decoder lives in worker processes)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_shards: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> "Batch":
        """Move tensors to ``device`` (non-blocking where the memory is pinned)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        targets = {task: {k: move(v) for k, v in t.items()} for task, t in self.targets.items()}
        return Batch(self.keys, move(self.image), move(self.has_image), move(self.text), targets, self.annotations,
                     self.skipped, self.skipped_shards)


@dataclass
class Skipped:
    """A sample the decoder dropped, and why."""

    key: str
    reason: str
    shard: str


@dataclass
class SampleDecoder:
    """Turns a raw webdataset sample into an :class:`Example`, or a :class:`Skipped` (runs in loader workers)."""

    tasks: Sequence[Any]
    vocab: Vocabulary
    image_size: int
    context_length: int
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, raw: dict[str, Any]) -> Example | Skipped:
        key = str(raw.get("__key__", "?"))
        try:
            return self.decode(raw)
        except CorruptSampleError as exc:  # a corrupt sample must not stop a run: skip and count it
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # noqa: BLE001  e.g. a label id outside the class list
            reason, detail = "invalid_annotation", f"{type(exc).__name__}: {exc}"
        shard = Path(str(raw.get("__url__", "?"))).name
        log.warning("skipping corrupt sample %s (%s in %s): %s", key, reason, shard, detail)
        return Skipped(key, reason, shard)

    def decode(self, raw: dict[str, Any]) -> Example:
        annotation = parse_annotation(raw.get("json"))
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        image = image_tensor(raw[image_key], self.image_size, self.max_pixels) if image_key else None
        document = annotation.get(TEXT_INPUT_FIELD) or ""
        text = self.vocab.encode(document, self.context_length) if document else []
        targets = {}
        for task in self.tasks:
            target = task.target(annotation, self.rng)
            if target is not None:
                targets[task.name] = target
        return Example(str(raw.get("__key__")), image, text, targets, annotation)


@dataclass
class Collator:
    """Stacks examples into a :class:`Batch`; each task collates its own targets."""

    tasks: Sequence[Any]
    image_size: int

    def __call__(self, examples: list[Example]) -> Batch:
        size = len(examples)
        image = torch.zeros(size, 3, self.image_size, self.image_size, dtype=torch.uint8)
        has_image = torch.zeros(size, dtype=torch.bool)
        for row, example in enumerate(examples):
            if example.image is not None:
                image[row] = example.image
                has_image[row] = True
        length = max([len(e.text) for e in examples] + [1])
        text = torch.full((size, length), PAD, dtype=torch.long)
        for row, example in enumerate(examples):
            text[row, : len(example.text)] = torch.tensor(example.text, dtype=torch.long)
        targets = {}
        for task in self.tasks:
            rows = [r for r, e in enumerate(examples) if task.name in e.targets]
            if rows:
                collated = task.collate([examples[r].targets[task.name] for r in rows])
                targets[task.name] = {"index": torch.tensor(rows, dtype=torch.long), **collated}
        return Batch([e.key for e in examples], image, has_image, text, targets, [e.annotation for e in examples])


def batch_examples(source: Iterator[Example | Skipped], batch_size: int, collate: Collator,
                   partial: bool) -> Iterator[Batch]:
    """Group decoded examples into batches; each batch carries the skips counted since the last one."""
    examples: list[Example] = []
    reasons: Counter = Counter()
    shards: Counter = Counter()
    for item in source:
        if isinstance(item, Skipped):
            reasons[item.reason] += 1
            shards[item.shard] += 1
            continue
        examples.append(item)
        if len(examples) == batch_size:
            yield _with_skips(collate(examples), reasons, shards)
            examples, reasons, shards = [], Counter(), Counter()
    if examples and partial:
        yield _with_skips(collate(examples), reasons, shards)


def _with_skips(batch: Batch, reasons: Counter, shards: Counter) -> Batch:
    batch.skipped, batch.skipped_shards = dict(reasons), dict(shards)
    return batch


# The corrupt fraction is only judged after this many samples, so one bad sample early on does not stop a run.
MIN_SAMPLES_FOR_CORRUPT_CHECK = 100


@dataclass
class CorruptCounter:
    """Totals of samples seen and skipped (per reason and shard), fed by the batches in the main process."""

    max_fraction: float | None = 0.01
    seen: int = 0
    reasons: Counter = field(default_factory=Counter)
    shards: Counter = field(default_factory=Counter)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def update(self, batch: Batch) -> None:
        """Count one batch; raise :class:`MMTLError` when the skipped fraction passes the limit."""
        self.reasons.update(batch.skipped)
        self.shards.update(batch.skipped_shards)
        self.seen += len(batch) + sum(batch.skipped.values())
        if self.max_fraction is None or self.seen < MIN_SAMPLES_FOR_CORRUPT_CHECK:
            return
        if self.skipped > self.max_fraction * self.seen:
            shard, count = self.shards.most_common(1)[0]
            by_reason = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common())
            raise MMTLError(
                f"{self.skipped} of {self.seen} samples were corrupt ({by_reason}), more than "
                f"data.max_corrupt_fraction={self.max_fraction}; worst shard: {shard} ({count} skipped). "
                f"Run `mmtl data inspect` on the data set to list them")

    def log_record(self) -> dict[str, float]:
        """Counters for the run log: ``data/skipped`` and ``data/skipped/<reason>``."""
        return {"data/skipped": self.skipped, **{f"data/skipped/{r}": n for r, n in sorted(self.reasons.items())}}


class CountingLoader(torch.utils.data.DataLoader):
    """A DataLoader whose batches update :attr:`corrupt` (skip totals) as they arrive."""

    corrupt: CorruptCounter

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            self.corrupt.update(batch)
            yield batch


def make_loader(
    path: str,
    split: str,
    *,
    tasks: Sequence[Any],
    vocab: Vocabulary,
    image_size: int,
    context_length: int,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    max_corrupt_fraction: float | None = 0.01,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` over one split.

    ``train=True``: shards resampled forever with a sample shuffle buffer (the loop counts steps).
    ``train=False``: each sample exactly once, in order.
    Corrupt samples are skipped and counted in ``loader.corrupt``; past ``max_corrupt_fraction``
    of the samples seen (after at least 100) iterating raises :class:`MMTLError`.
    """
    urls = split_shards(path, split)
    if train:
        # both seeded: webdataset's defaults mix in the time and pid, and a run must be reproducible
        stages = [wds.ResampledShards(urls, seed=seed, deterministic=True),
                  wds.tarfile_to_samples(handler=wds.warn_and_continue),
                  wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed)]
    else:
        stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                  wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    decoder = SampleDecoder(tasks, vocab, image_size, context_length, seed=seed, max_pixels=max_image_pixels)
    collate = Collator(tasks, image_size)
    pipeline = wds.DataPipeline(
        *stages,
        wds.map(decoder),
        functools.partial(batch_examples, batch_size=batch_size, collate=collate, partial=not train),
    )
    loader = CountingLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    loader.corrupt = CorruptCounter(max_corrupt_fraction)
    return loader
