"""Streaming loader: webdataset shards -> decoded samples -> multi-task batches.

One sample feeds every task it has annotations for, so an image is decoded and encoded once
however many tasks use it. Tasks turn annotations into targets themselves; the loader never
looks at a task's name.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import webdataset as wds

from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD
from data_pipelines.shards import split_shards
from data_pipelines.transforms import image_tensor
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

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> "Batch":
        """Move tensors to ``device`` (non-blocking where the memory is pinned)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        targets = {task: {k: move(v) for k, v in t.items()} for task, t in self.targets.items()}
        return Batch(self.keys, move(self.image), move(self.has_image), move(self.text), targets, self.annotations)


@dataclass
class SampleDecoder:
    """Turns a raw webdataset sample into an :class:`Example` (runs in loader workers)."""

    tasks: Sequence[Any]
    vocab: Vocabulary
    image_size: int
    context_length: int
    seed: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, raw: dict[str, Any]) -> Example | None:
        key = raw.get("__key__", "?")
        try:
            return self.decode(raw)
        except Exception as exc:  # a corrupt sample must not stop a run: skip and count it
            self.skipped += 1
            log.warning("skipping corrupt sample %s: %s", key, exc)
            return None

    def decode(self, raw: dict[str, Any]) -> Example:
        if "json" not in raw:
            raise ValueError("sample has no json annotations")
        annotation = json.loads(raw["json"])
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        image = image_tensor(raw[image_key], self.image_size) if image_key else None
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
        examples = [e for e in examples if e is not None]
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


def _drop_none(source: Iterator[Any]) -> Iterator[Any]:
    return (item for item in source if item is not None)


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
) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` over one split.

    ``train=True``: shards resampled forever with a sample shuffle buffer (the loop counts steps).
    ``train=False``: each sample exactly once, in order.
    """
    urls = split_shards(path, split)
    if train:
        stages = [wds.ResampledShards(urls, seed=seed), wds.tarfile_to_samples(handler=wds.warn_and_continue),
                  wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100))]
    else:
        stages = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                  wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    decoder = SampleDecoder(tasks, vocab, image_size, context_length, seed=seed)
    pipeline = wds.DataPipeline(
        *stages,
        wds.map(decoder),
        _drop_none,
        wds.batched(batch_size, collation_fn=Collator(tasks, image_size), partial=not train),
    )
    return torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0
    )
