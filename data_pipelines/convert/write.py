"""The one write path of ``mmtl data convert``: records from any reader -> one split of shards plus
``dataset.json``. Images are prepared in a process pool (see :mod:`data_pipelines.convert.media`)."""
from __future__ import annotations

import json
import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from data_pipelines.convert.formats import FORMATS, format_names
from data_pipelines.convert.media import Prepared, process
from data_pipelines.convert.records import FALLBACK_ENCODINGS, ReadReport, Record, outside_root_hint
from data_pipelines.sample import class_fields, class_names, task_fields
from data_pipelines.shards import DATASET_FILE, SplitStats, write_dataset_info, write_split
from data_pipelines.transforms import DEFAULT_MAX_PIXELS
from mmtl.errors import MMTLError


@dataclass
class ConvertOptions:
    """How a split is written."""

    out: Path
    split: str = "train"
    maxcount: int = 1000
    resize_max: int = 0
    jpeg_quality: int = 90
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    # larger images are skipped as decompression bombs; 0: the loader's limit, or PIL's own hard
    # limit when --resize-max shrinks them on the way in (so huge photos convert, bombs do not)
    max_pixels: int = 0
    # samples are written in a seeded random order, so no shard holds one class (or one source
    # file) only; shuffle=False keeps the input order
    shuffle: bool = True
    seed: int = 0

    def pixel_limit(self) -> int:
        """The pixel limit in force (see ``max_pixels``)."""
        from PIL import Image

        if self.max_pixels:
            return self.max_pixels
        return max(DEFAULT_MAX_PIXELS, 2 * (Image.MAX_IMAGE_PIXELS or 0)) if self.resize_max else DEFAULT_MAX_PIXELS

    def check(self) -> None:
        """Raise MMTLError naming the flag of the first value out of range."""
        if self.maxcount < 1:
            raise MMTLError(f"--maxcount must be >= 1, got {self.maxcount}")
        if self.resize_max < 0:
            raise MMTLError(f"--resize-max must be >= 0, got {self.resize_max}")
        if not 1 <= self.jpeg_quality <= 100:
            raise MMTLError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.workers < 1:
            raise MMTLError(f"--workers must be >= 1, got {self.workers}")

    def written_options(self) -> dict[str, Any]:
        """The options ``dataset.json`` records beside the reader's."""
        return {"split": self.split, "maxcount": self.maxcount, "resize_max": self.resize_max,
                "jpeg_quality": self.jpeg_quality, "shuffle": self.shuffle, "seed": self.seed}


@dataclass
class ConvertResult:
    """Summary of one conversion."""

    split: str
    stats: SplitStats
    skipped: Counter
    text_fallback: int
    reencoded: int
    info: dict[str, Any]
    null_labels: int = 0
    warnings: list[str] = field(default_factory=list)
    outside_root: str = ""

    def summary(self) -> str:
        """Human-readable lines: samples per task, what was skipped and why."""
        lines = [f"{self.split}: wrote {self.stats.samples} samples in {len(self.stats.shards)} shard(s)"]
        for task in task_fields():
            if self.stats.tasks.get(task):
                lines.append(f"  {task}: {self.stats.tasks[task]}")
        lines.append(f"  images re-encoded: {self.reencoded}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        if self.null_labels:
            lines.append(f"  null label entries left out (no class named 'None'): {self.null_labels}")
        if self.text_fallback:
            lines.append(f"  text lines decoded with a non-UTF-8 fallback ({'/'.join(FALLBACK_ENCODINGS)}): "
                         f"{self.text_fallback}")
        return "\n".join(lines + self._skipped_lines())

    def _skipped_lines(self) -> list[str]:
        if not self.skipped:
            return ["  skipped: 0"]
        lines = [f"  skipped: {sum(self.skipped.values())}"]
        lines.extend(f"    {reason}: {count}" for reason, count in self.skipped.most_common())
        if self.skipped.get("decompression_bomb"):
            lines.append("    (images over the pixel limit convert with --resize-max, which shrinks them on the way in)")
        if self.skipped.get("path_outside_root"):
            lines.append(f"    ({outside_root_hint(self.outside_root)})")
        return lines


def _read_info_field(info_path: Path, name: str, default: Any) -> Any:
    """One top-level field of an existing ``dataset.json`` (``default`` when absent or unreadable)."""
    if not info_path.is_file():
        return default
    try:
        return json.loads(info_path.read_text()).get(name, default)
    except (json.JSONDecodeError, AttributeError):
        return default


def prepare_output(out: Path, split: str, overwrite: bool) -> None:
    """Refuse to mix a new split into existing shards of the same split unless ``overwrite``."""
    existing = sorted(out.glob(f"{split}-*.tar")) if out.is_dir() else []
    listed = split in _read_info_field(out / DATASET_FILE, "splits", {})
    if (existing or listed) and not overwrite:
        raise MMTLError(f"{out} already holds split {split!r}; pass --overwrite to replace it "
                        f"(or choose another --out or --split)")
    for path in existing:
        path.unlink()


def _samples(results: Iterator[Prepared], total: int, options: ConvertOptions, skipped: Counter,
             counters: Counter) -> Iterator[dict[str, Any]]:
    """Webdataset samples of the prepared records; skipped ones are counted by reason."""
    for record, jpg, reencoded, reason in tqdm(results, total=total, desc=f"convert {options.split}",
                                               unit="img", disable=not options.progress, dynamic_ncols=True):
        if reason:
            skipped[reason] += 1
            continue
        counters["reencoded"] += reencoded
        sample = {"__key__": record.key, "json": record.annotation}
        if jpg is not None:
            sample["jpg"] = jpg
        sample.update(record.extra_data)
        yield sample


def _write_records(records: list[Record], options: ConvertOptions, skipped: Counter,
                   counters: Counter) -> SplitStats:
    """Prepare the records' files (in a pool of ``options.workers``) and write them as one split."""
    jobs = [(r, options.resize_max, options.jpeg_quality, options.pixel_limit()) for r in records]
    if options.workers > 1:
        with multiprocessing.get_context("fork").Pool(options.workers) as pool:
            results = _samples(pool.imap(process, jobs, chunksize=8), len(jobs), options, skipped, counters)
            return write_split(options.out, options.split, results, options.maxcount)
    results = _samples(map(process, jobs), len(jobs), options, skipped, counters)
    return write_split(options.out, options.split, results, options.maxcount)


def convert(records: list[Record], report: ReadReport, options: ConvertOptions, *, name: str,
            classes: list[str] | None, label_mode: str, reader_options: dict[str, Any]) -> ConvertResult:
    """Process ``records`` (images in a pool of ``options.workers``) and write one split plus ``dataset.json``."""
    options.check()
    if not records:
        hint = f"; {outside_root_hint(report.outside_root)}" if report.skipped.get("path_outside_root") else ""
        skipped = dict(report.skipped) or "none"
        raise MMTLError(f"nothing to convert: no usable samples found (skipped: {skipped}){hint}")
    info_path = options.out / DATASET_FILE
    previous = _read_info_field(info_path, "label_mode", None)
    if previous and previous != label_mode:
        raise MMTLError(f"{options.out} holds label_mode {previous!r} data; this conversion gives {label_mode!r}")
    prepare_output(options.out, options.split, options.overwrite)
    if options.shuffle:
        records = list(records)
        random.Random(options.seed).shuffle(records)
    skipped, counters = Counter(report.skipped), Counter(reencoded=0)
    stats = _write_records(records, options, skipped, counters)
    stats.skipped = skipped
    if stats.samples == 0:
        raise MMTLError(f"every input was skipped ({dict(skipped)}); nothing written")
    merged_classes = _merge_classes(info_path, classes)
    info = write_dataset_info(options.out, name, {options.split: stats}, merged_classes,
                              {**reader_options, **options.written_options()}, extra={"label_mode": label_mode})
    return ConvertResult(options.split, stats, skipped, report.text_fallback, counters["reencoded"], info,
                         report.null_labels, report.warnings, report.outside_root)


def _merge_classes(info_path: Path, classes: list[str] | None) -> list[str] | None:
    """Keep the class order already in ``dataset.json`` and append new classes (labels are stored by name)."""
    if classes is None:
        return None
    old = list(_read_info_field(info_path, "classes", []))
    return old + [c for c in classes if c not in set(old)]


def convert_source(fmt: str, options: ConvertOptions, *, label_mode: str | None = None, name: str | None = None,
                   **source: Any) -> ConvertResult:
    """Read a source of format ``fmt`` and write it as one split (the ``mmtl data convert`` action).

    ``source``: the reader's inputs by option name (see each format's ``options``: ``images``,
    ``captions``, ``instances``, ``root``, ``input``, ``image_root``, ``mapping``, ``allow_outside_root``).
    """
    if fmt not in FORMATS:
        raise MMTLError(f"unknown format {fmt!r}; choose from: {', '.join(format_names())}")
    spec = FORMATS.get(fmt)
    missing = [option.command_flag for option in spec.options if option.required and not source.get(option.name)]
    if missing:
        raise MMTLError(f"--format {fmt} needs {' and '.join(missing)}")
    if label_mode not in (None, "single", "multi"):
        raise MMTLError(f"--label-mode must be 'single' or 'multi', got {label_mode!r}")
    report = ReadReport()
    records, classes = spec.read(source, report)
    mode = label_mode or spec.label_mode
    if mode == "single":
        fields = class_fields()
        several = sum(1 for r in records if len(class_names(r.annotation, fields)) > 1)
        if several:
            raise MMTLError(f"--label-mode single, but {several} sample(s) have several labels")
    reader_options = {"format": fmt, **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in source.items()
                                        if v not in (None, False, (), [])}}
    return convert(records, report, options, name=name or spec.dataset_name(source), classes=classes,
                   label_mode=mode, reader_options=reader_options)
