"""Streaming loader: webdataset shards -> decoded samples -> multi-task batches.

The raw stream (shard order, rank/worker split, epochs, mixing of sources, grouping into batches,
skipping on resume) is built in ``data_pipelines.stream``; this module decodes and collates.

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
from typing import Any, Iterable, Iterator, Sequence

import torch

from data_pipelines.batch import Batch, ModalityInput, rows_with as _rows_with  # noqa: F401  (Batch: re-exported)
from data_pipelines.mixing import MixPlan, Source, plan_mixing
from data_pipelines.modalities import Modality, extra_inputs
from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD
from data_pipelines.shards import as_mapping, is_native, split_shards
from data_pipelines.stream import MODES, StreamDataset, StreamSpec, resolve_rank, sub_seed
from data_pipelines.transforms import DEFAULT_MAX_PIXELS, CorruptSampleError, DecodedImageCache, parse_annotation
from mmtl.config import ExperimentConfig
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
    # modalities beyond image and text (data_pipelines.modalities), by name
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def extra_modalities_of(tasks: Sequence[Any]) -> dict[str, Modality]:
    """The data units of the extra modalities of the model the tasks belong to (their context's ModelConfig)."""
    model = next((t.context.model for t in tasks if getattr(getattr(t, "context", None), "model", None)), None)
    if model is None or not getattr(model, "modalities", None):
        return {}
    return extra_inputs(model)


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
    # extra modality units to decode (data_pipelines.modalities); None: those of the tasks' model config
    modalities: dict[str, Modality] | None = None
    # bytes of decoded images kept to reuse in later epochs (DecodedImageCache; 0: none)
    image_cache_bytes: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.images = DecodedImageCache(self.image_cache_bytes)
        if self.modalities is None:
            self.modalities = extra_modalities_of(self.tasks)

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
        targets = self.targets(annotation)  # before the image: advance() must draw the same random numbers
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        image = self.images.image(raw[image_key], self.image_size, self.max_pixels) if image_key else None
        document = annotation.get(TEXT_INPUT_FIELD) or ""
        text = self.vocab.encode(document, self.context_length) if document else []
        inputs = {}
        for name, modality in self.modalities.items():
            value = modality.decode(raw)
            if value is not None:
                inputs[name] = value
        return Example(str(raw.get("__key__")), image, text, targets, annotation, inputs)

    def targets(self, annotation: dict[str, Any]) -> dict[str, Any]:
        """Each task's target from one annotation (tasks that find nothing to learn are left out)."""
        targets = {}
        for task in self.tasks:
            target = task.target(annotation, self.rng)
            if target is not None:
                targets[task.name] = target
        return targets

    def advance(self, raw: dict[str, Any]) -> None:
        """Skip ``raw`` without decoding its image or text, drawing the random numbers its decode would draw."""
        try:
            self.targets(parse_annotation(raw.get("json")))
        except Exception:  # noqa: BLE001  decode() would have skipped it at the same point
            pass


@dataclass
class Collator:
    """Stacks examples into a :class:`Batch`; each task collates its own targets."""

    tasks: Sequence[Any]
    image_size: int
    # extra modality units that stack their inputs (data_pipelines.modalities); None: those of the tasks' model config
    modalities: dict[str, Modality] | None = None

    def __post_init__(self) -> None:
        if self.modalities is None:
            self.modalities = extra_modalities_of(self.tasks)

    def __call__(self, examples: list[Example]) -> Batch:
        image, has_image = self.images(examples)
        length = max([len(e.text) for e in examples] + [1])
        # one tensor from padded lists: a tensor per row cost more than the rest of the collation
        text = torch.tensor([e.text + [PAD] * (length - len(e.text)) for e in examples], dtype=torch.long)
        targets = {}
        for task in self.tasks:
            rows = [r for r, e in enumerate(examples) if task.name in e.targets]
            if rows:
                collated = task.collate([examples[r].targets[task.name] for r in rows])
                targets[task.name] = {"index": torch.tensor(rows, dtype=torch.long), **collated}
        inputs = {}
        for name, modality in self.modalities.items():
            items = [e.inputs.get(name) for e in examples]
            rows = sum(item is not None for item in items)
            if rows:  # a modality no row carries is left out, so models skip its encoder
                inputs[name] = ModalityInput(*modality.collate(items), rows)
        return Batch([e.key for e in examples], image, has_image, text, targets, [e.annotation for e in examples],
                     inputs=inputs, rows_with=_rows_with(has_image, text))

    def images(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images of the batch (zeros in rows without one) and which rows have one; stacked in one
        copy, not row by row."""
        rows = [r for r, e in enumerate(examples) if e.image is not None]
        has_image = torch.zeros(len(examples), dtype=torch.bool)
        has_image[rows] = True
        if rows and len(rows) == len(examples):
            return torch.stack([e.image for e in examples]).to(torch.uint8), has_image
        image = torch.zeros(len(examples), 3, self.image_size, self.image_size, dtype=torch.uint8)
        if rows:
            image[rows] = torch.stack([examples[r].image for r in rows]).to(torch.uint8)
        return image, has_image


def batch_groups(groups: Iterable[list[tuple[int, dict[str, Any]]]], decoders: Sequence[SampleDecoder],
                 collate: Collator) -> Iterator[Batch]:
    """Decode each group of raw samples (source index, sample) into one batch of its good samples.

    A batch is always one group, so batch k is a fixed set of raw samples (what makes resuming
    exact); corrupt samples leave it shorter. Each batch carries the skips counted since the last
    one (a group with no good sample yields nothing; its skips travel with the next batch).
    """
    reasons: Counter = Counter()
    shards: Counter = Counter()
    for chunk in groups:
        examples: list[Example] = []
        for source, raw in chunk:
            item = decoders[source](raw)
            if isinstance(item, Skipped):
                reasons[item.reason] += 1
                shards[item.shard] += 1
            else:
                examples.append(item)
        if examples:
            yield _with_skips(collate(examples), reasons, shards)
            reasons, shards = Counter(), Counter()


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
    """A DataLoader whose batches update :attr:`corrupt` (skip totals) as they arrive.

    :attr:`position` is the index of the next batch it will yield (``start_batch`` + batches yielded):
    what a resumed run passes back as ``start_batch``. :attr:`plan` is the source mixture.
    """

    corrupt: CorruptCounter
    plan: MixPlan
    start_batch: int = 0
    position: int = 0

    def __iter__(self) -> Iterator[Batch]:
        self.position = self.start_batch
        for batch in super().__iter__():
            self.corrupt.update(batch)
            self.position += 1
            yield batch


@dataclass(frozen=True)
class LoaderSettings:
    """How :func:`make_loader` reads, decodes and batches a stream.

    ``train=True``: ``mode="resampled"`` draws shards with replacement forever; ``mode="epoch"``
    passes over the data in a new shard order each epoch (``epochs`` passes, None: forever). Both
    shuffle samples in a buffer of ``shuffle_buffer``, and give each rank and worker its own part
    (see ``data_pipelines.stream``). ``length_buckets`` > 0 groups documents of similar length.
    ``train=False``: each sample exactly once, in order (split over ranks and workers).
    ``mapping``: ``data.map`` items for a path without dataset.json (sources carry their own).
    ``rank``/``world_size``: this process among the data-parallel ones (default: torch.distributed's,
    else 0 of 1). ``start_batch=k`` starts at batch k of the very stream a fresh loader with the same
    settings yields: the first k batches are read as raw samples and skipped, not decoded.
    Past ``max_corrupt_fraction`` of the samples seen (after at least 100) iterating raises :class:`MMTLError`.
    ``decoded_cache_bytes`` (training only): decoded images kept for later epochs, over all workers
    (``transforms.DecodedImageCache``). ``shard_cache_bytes`` (training only): whole shards kept in memory
    after their first read, so later epochs skip the tar files (``shardcache.ShardCache``). Both hold a set
    whole or not at all, and neither changes a batch.
    """

    image_size: int
    context_length: int
    batch_size: int
    train: bool
    num_workers: int = 0
    shuffle_buffer: int = 1000
    seed: int = 0
    max_corrupt_fraction: float | None = 0.01
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    mode: str = "resampled"
    epochs: int | None = None
    mixing: str = "natural"
    mixing_temperature: float = 2.0
    length_buckets: int = 0
    rank: int | None = None
    world_size: int | None = None
    start_batch: int = 0
    mapping: Sequence[str] = ()
    decoded_cache_bytes: int = 0
    shard_cache_bytes: int = 0

    @classmethod
    def for_training(cls, config: ExperimentConfig, **position: Any) -> "LoaderSettings":
        """The training stream's settings from the experiment config; ``position``: ``rank``, ``world_size``,
        ``start_batch``."""
        data, model = config.data, config.model
        return cls(image_size=model.image.image_size, context_length=model.text.context_length,
                   batch_size=data.batch_size, train=True, num_workers=data.num_workers,
                   shuffle_buffer=data.shuffle_buffer, seed=config.seed, max_corrupt_fraction=data.max_corrupt_fraction,
                   max_image_pixels=data.max_image_pixels, mode=data.mode, mixing=data.mixing,
                   mixing_temperature=data.mixing_temperature, length_buckets=data.length_buckets,
                   decoded_cache_bytes=data.decoded_cache_mb * 2**20, shard_cache_bytes=data.shard_cache_mb * 2**20,
                   **position)

    def check(self) -> None:
        """Raise :class:`MMTLError` for a mode or a count the loader cannot use."""
        if self.mode not in MODES:
            raise MMTLError(f"data.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.start_batch < 0 or self.length_buckets < 0:
            raise MMTLError(f"start_batch and length_buckets must be >= 0; got {self.start_batch}, {self.length_buckets}")


def _stream_sources(path: str | Sequence[Source], split: str, mapping: Sequence[str],
                    tasks: Sequence[Any]) -> list[Source]:
    """The sources of a loader (one for a path), each checked to name only tasks among ``tasks``."""
    sources = [Source(str(path), split, mapping=tuple(mapping))] if isinstance(path, (str, Path)) else list(path)
    names = [t.name for t in tasks]
    for source in sources:
        unknown = sorted(set(source.tasks or ()) - set(names))
        if unknown:
            raise MMTLError(f"source {source.path} names tasks {', '.join(unknown)}, not among {', '.join(names)}")
    return sources


def make_loader(path: str | Sequence[Source], split: str, tasks: Sequence[Any], vocab: Vocabulary,
                settings: LoaderSettings) -> CountingLoader:
    """A DataLoader of :class:`Batch` over one split, or over several sources mixed.

    ``path``: a shard directory (its ``split`` is read), or a list of :class:`Source` (``split``
    unused) mixed by ``settings.mixing`` (see ``data_pipelines.mixing``). Batch k is raw samples
    k*B ... k*B+B-1 of its worker; corrupt ones are skipped (the batch is shorter) and counted in
    ``loader.corrupt``. See :class:`LoaderSettings` for the rest.
    """
    settings.check()
    sources = _stream_sources(path, split, settings.mapping, tasks)
    rank, world_size = resolve_rank(settings.rank, settings.world_size)
    train = settings.train
    # each worker holds its own caches, one per source: the budgets are shared out among them
    share = max(1, settings.num_workers) * len(sources)
    spec = StreamSpec(
        shards=[split_shards(s.path, s.split) for s in sources],
        mappings=[None if is_native(s.path) else as_mapping(s.mapping) for s in sources],
        plan=plan_mixing(sources, [t.name for t in tasks], settings.mixing, settings.mixing_temperature),
        batch_size=settings.batch_size, mode=settings.mode if train else "epoch", shuffle=train,
        shuffle_buffer=settings.shuffle_buffer, seed=settings.seed, epochs=settings.epochs if train else 1,
        length_buckets=settings.length_buckets if train else 0, rank=rank, world_size=world_size,
        shard_cache_bytes=settings.shard_cache_bytes // share if train else 0,
    )
    cache = settings.decoded_cache_bytes // share if train else 0
    decoders = [SampleDecoder([t for t in tasks if s.tasks is None or t.name in s.tasks], vocab, settings.image_size,
                              settings.context_length, seed=sub_seed(settings.seed, 0, i),
                              max_pixels=settings.max_image_pixels, image_cache_bytes=cache)
                for i, s in enumerate(sources)]
    batches = functools.partial(batch_groups, collate=Collator(tasks, settings.image_size))
    dataset = StreamDataset(spec, decoders, batches, settings.start_batch)
    loader = CountingLoader(dataset, batch_size=None, num_workers=settings.num_workers,
                            persistent_workers=settings.num_workers > 0)
    loader.corrupt = CorruptCounter(settings.max_corrupt_fraction)
    loader.plan, loader.start_batch, loader.position = spec.plan, settings.start_batch, settings.start_batch
    return loader
