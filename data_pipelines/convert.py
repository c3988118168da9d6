"""Converters from common real-world layouts to mmtl shards (``mmtl data convert``).

Each reader turns its input into :class:`Record`\\ s (a key, an optional image file, annotation
fields of the sample contract) and counts what it leaves out; :func:`convert` then decodes,
normalises and optionally pre-resizes the images in a process pool and writes one split.

Images are stored as JPEG under ``jpg``: source JPEGs that need no change (RGB, upright, small
enough) keep their original bytes; everything else (grayscale, CMYK, palette, alpha, EXIF-rotated,
PNG/WebP/...) is decoded, turned upright into RGB and re-encoded once. One image key keeps the
loader and the benchmarks simple, and photographs lose nothing visible at quality 90-95.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from data_pipelines.coco import read_coco
from data_pipelines.fieldmap import parse_mapping
from data_pipelines.modalities import store_input
from data_pipelines.records import FALLBACK_ENCODINGS, KeyMaker, ReadReport, Record
from data_pipelines.sample import task_fields
from data_pipelines.shards import DATASET_FILE, SplitStats, write_dataset_info, write_split
from data_pipelines.tables import TABLE_FORMATS, read_table
from data_pipelines.transforms import (
    DEFAULT_MAX_PIXELS, CorruptSampleError, load_pixels, open_image, to_rgb,
)
from mmtl.errors import MMTLError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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
        if self.skipped:
            lines.append(f"  skipped: {sum(self.skipped.values())}")
            lines.extend(f"    {reason}: {count}" for reason, count in self.skipped.most_common())
            if self.skipped.get("decompression_bomb"):
                lines.append("    (images over the pixel limit convert with --resize-max, which shrinks them on the way in)")
            if self.skipped.get("path_outside_root"):
                lines.append("    (paths that leave the image folder, ../ or absolute, are read only with --allow-outside-root)")
        else:
            lines.append("  skipped: 0")
        return "\n".join(lines)


def read_imagefolder(root: Path, report: ReadReport) -> tuple[list[Record], list[str]]:
    """``root/<class>/<image>`` -> single-label recognition records; returns them and the class list."""
    if not root.is_dir():
        raise MMTLError(f"--root directory not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MMTLError(f"{root} has no class subfolders (expected ROOT/<class>/<image files>)")
    keys = KeyMaker()
    records = []
    for name in classes:
        for path in sorted((root / name).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                report.skipped["not_an_image_file"] += 1
                continue
            records.append(Record(keys(f"{name}_{path.stem}"), {"labels": [name], "source": root.name}, str(path)))
    return records, classes


# ---------------------------------------------------------------------------------------------
# images


def prepare_image(data: bytes, resize_max: int, quality: int, max_pixels: int) -> tuple[bytes, bool]:
    """Image file bytes -> (JPEG bytes, re-encoded?): upright RGB, long side <= ``resize_max`` (0: any).

    Source JPEGs that are already RGB, upright and small enough keep their bytes. Raises
    :class:`CorruptSampleError`.
    """
    from PIL import Image, ImageOps

    image = open_image(data, max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  unreadable EXIF: treat as upright
        orientation = 1
    shrink = bool(resize_max) and max(image.size) > resize_max
    if image.format == "JPEG" and image.mode == "RGB" and orientation in (1, None) and not shrink:
        load_pixels(image)  # fully decode once, so truncated files are caught here, not in training
        return data, False
    if shrink and image.format == "JPEG":
        image.draft("RGB", (resize_max, resize_max))  # DCT-domain downscale: far less work for big photos
    load_pixels(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        pass
    image = to_rgb(image)
    if shrink:
        image.thumbnail((resize_max, resize_max), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), True


def _process(job: tuple[Record, int, int, int]) -> tuple[Record, bytes | None, bool, str | None]:
    """Pool worker: read and prepare one record's image; returns (record, jpg, re-encoded, skip reason)."""
    record, resize_max, quality, max_pixels = job
    if record.image_path is None and record.image_bytes is None:
        return _with_extras(record, None, False)
    try:
        data = record.image_bytes if record.image_bytes is not None else Path(record.image_path).read_bytes()
    except OSError:
        return record, None, False, "missing_image_file"
    try:
        jpg, reencoded = prepare_image(data, resize_max, quality, max_pixels)
    except CorruptSampleError as exc:
        return record, None, False, exc.reason
    return _with_extras(record, jpg, reencoded)


def _with_extras(record: Record, jpg: bytes | None, reencoded: bool) -> tuple[Record, bytes | None, bool, str | None]:
    """Read and check the record's further modality files (a bad one skips the record, like a bad image)."""
    for name, path in record.extra_paths.items():
        try:
            key, data = store_input(name, path)
        except OSError:
            return record, None, False, f"missing_{name}_file"
        except CorruptSampleError as exc:
            return record, None, False, exc.reason
        record.extra_data[key] = data
    return record, jpg, reencoded, None


# ---------------------------------------------------------------------------------------------
# writing


def prepare_output(out: Path, split: str, overwrite: bool) -> None:
    """Refuse to mix a new split into existing shards of the same split unless ``overwrite``."""
    existing = sorted(out.glob(f"{split}-*.tar")) if out.is_dir() else []
    listed = False
    if (out / DATASET_FILE).is_file():
        try:
            listed = split in json.loads((out / DATASET_FILE).read_text()).get("splits", {})
        except (json.JSONDecodeError, AttributeError):
            listed = False
    if (existing or listed) and not overwrite:
        raise MMTLError(f"{out} already holds split {split!r}; pass --overwrite to replace it "
                        f"(or choose another --out or --split)")
    for path in existing:
        path.unlink()


def convert(records: list[Record], report: ReadReport, options: ConvertOptions, *, name: str,
            classes: list[str] | None, label_mode: str, reader_options: dict[str, Any]) -> ConvertResult:
    """Process ``records`` (images in a pool of ``options.workers``) and write one split plus ``dataset.json``."""
    if options.maxcount < 1:
        raise MMTLError(f"--maxcount must be >= 1, got {options.maxcount}")
    if options.resize_max < 0:
        raise MMTLError(f"--resize-max must be >= 0, got {options.resize_max}")
    if not 1 <= options.jpeg_quality <= 100:
        raise MMTLError(f"--jpeg-quality must be in 1..100, got {options.jpeg_quality}")
    if options.workers < 1:
        raise MMTLError(f"--workers must be >= 1, got {options.workers}")
    if not records:
        raise MMTLError(f"nothing to convert: no usable samples found (skipped: {dict(report.skipped) or 'none'})")
    out = options.out
    info_path = out / DATASET_FILE
    if info_path.is_file():
        try:
            previous = json.loads(info_path.read_text()).get("label_mode")
        except (json.JSONDecodeError, AttributeError):
            previous = None
        if previous and previous != label_mode:
            raise MMTLError(f"{out} holds label_mode {previous!r} data; this conversion gives {label_mode!r}")
    prepare_output(out, options.split, options.overwrite)
    if options.shuffle:
        records = list(records)
        random.Random(options.seed).shuffle(records)
    skipped = Counter(report.skipped)
    counters = {"reencoded": 0}
    jobs = [(r, options.resize_max, options.jpeg_quality, options.pixel_limit()) for r in records]

    def samples(results: Iterator[tuple[Record, bytes | None, bool, str | None]]) -> Iterator[dict[str, Any]]:
        for record, jpg, reencoded, reason in tqdm(results, total=len(jobs), desc=f"convert {options.split}",
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

    if options.workers > 1:
        with multiprocessing.get_context("fork").Pool(options.workers) as pool:
            stats = write_split(out, options.split, samples(pool.imap(_process, jobs, chunksize=8)), options.maxcount)
    else:
        stats = write_split(out, options.split, samples(map(_process, jobs)), options.maxcount)
    stats.skipped = skipped
    if stats.samples == 0:
        raise MMTLError(f"every input was skipped ({dict(skipped)}); nothing written")
    all_options = {**reader_options, "split": options.split, "maxcount": options.maxcount,
                   "resize_max": options.resize_max, "jpeg_quality": options.jpeg_quality,
                   "shuffle": options.shuffle, "seed": options.seed}
    merged_classes = _merge_classes(info_path, classes)
    info = write_dataset_info(out, name, {options.split: stats}, merged_classes, all_options,
                              extra={"label_mode": label_mode})
    return ConvertResult(options.split, stats, skipped, report.text_fallback, counters["reencoded"], info,
                         report.null_labels, report.warnings)


def _merge_classes(info_path: Path, classes: list[str] | None) -> list[str] | None:
    """Keep the class order already in ``dataset.json`` and append new classes (labels are stored by name)."""
    if classes is None:
        return None
    old: list[str] = []
    if info_path.is_file():
        try:
            old = list(json.loads(info_path.read_text()).get("classes", []))
        except (json.JSONDecodeError, AttributeError):
            old = []
    return old + [c for c in classes if c not in set(old)]


@dataclass(frozen=True)
class SourceFormat:
    """One ``--format``: the flags it needs, its reader, its default label mode and data set name."""

    required: tuple[str, ...]
    read: Callable[[dict[str, Any], ReadReport], tuple[list[Record], list[str] | None]]
    label_mode: str
    name: Callable[[dict[str, Any]], str]


def _read_table(fmt: str) -> Callable[[dict[str, Any], ReadReport], tuple[list[Record], None]]:
    def read(args: dict[str, Any], report: ReadReport) -> tuple[list[Record], None]:
        root = Path(args["image_root"]) if args.get("image_root") else None
        records = read_table(Path(args["input"]), fmt, root, parse_mapping(args.get("mapping") or ()), report,
                             bool(args.get("allow_outside_root")))
        return records, None
    return read


FORMATS: dict[str, SourceFormat] = {
    "coco": SourceFormat(
        ("images", "captions"),
        lambda a, r: read_coco(Path(a["images"]), Path(a["captions"]), Path(a["instances"]) if a.get("instances") else None,
                               r, bool(a.get("allow_outside_root"))),
        "multi", lambda a: "coco"),
    "imagefolder": SourceFormat(("root",), lambda a, r: read_imagefolder(Path(a["root"]), r), "single",
                                lambda a: Path(a["root"]).name),
    **{fmt: SourceFormat(("input",), _read_table(fmt), "multi", lambda a: Path(a["input"]).stem) for fmt in TABLE_FORMATS},
}


def convert_source(fmt: str, options: ConvertOptions, *, label_mode: str | None = None, name: str | None = None,
                   **source: Any) -> ConvertResult:
    """Read a source of format ``fmt`` and write it as one split (the ``mmtl data convert`` action).

    ``source``: the reader's inputs by option name (``images``, ``captions``, ``instances``,
    ``root``, ``input``, ``image_root``, ``mapping``, ``allow_outside_root``).
    """
    if fmt not in FORMATS:
        raise MMTLError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    missing = [f"--{flag.replace('_', '-')}" for flag in spec.required if not source.get(flag)]
    if missing:
        raise MMTLError(f"--format {fmt} needs {' and '.join(missing)}")
    if label_mode not in (None, "single", "multi"):
        raise MMTLError(f"--label-mode must be 'single' or 'multi', got {label_mode!r}")
    report = ReadReport()
    records, classes = spec.read(source, report)
    mode = label_mode or spec.label_mode
    if mode == "single":
        several = sum(1 for r in records if len(r.annotation.get("labels", [])) > 1)
        if several:
            raise MMTLError(f"--label-mode single, but {several} sample(s) have several labels")
    reader_options = {"format": fmt, **{k: (list(v) if k == "mapping" else v) for k, v in source.items()
                                        if v not in (None, False, (), [])}}
    return convert(records, report, options, name=name or spec.name(source), classes=classes, label_mode=mode,
                   reader_options=reader_options)
