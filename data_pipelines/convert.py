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

import csv
import io
import json
import multiprocessing
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from data_pipelines.sample import TASK_FIELDS, supervised_tasks
from data_pipelines.shards import DATASET_FILE, SplitStats, write_dataset_info, write_split
from data_pipelines.transforms import (
    DEFAULT_MAX_PIXELS, CorruptSampleError, load_pixels, open_image, to_rgb,
)
from mmtl.errors import MMTLError

FORMATS = ("coco", "imagefolder", "jsonl", "csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# fields a JSONL/CSV row may fill (see the sample contract); "image" and "key" are not annotations
TABLE_FIELDS = ("image", "key", "labels", "captions", "document", "summaries", "source", "depth", "audio", "count")
# row fields naming files of further modalities (paths like ``image``): field -> how the file is stored
EXTRA_FILE_FIELDS = ("depth", "audio")
AUDIO_SUFFIXES = (".wav", ".flac")
_LIST_FIELDS = ("labels", "captions", "summaries")
# text that is not UTF-8 is decoded with these, in order (latin-1 accepts any byte)
FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass
class Record:
    """One input item before its image is processed."""

    key: str
    annotation: dict[str, Any]
    image_path: str | None = None
    # further modalities: row field (depth, audio) -> file path; their checked bytes by sample key
    extra_paths: dict[str, str] = field(default_factory=dict)
    extra_data: dict[str, bytes] = field(default_factory=dict)


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

    def pixel_limit(self) -> int:
        """The pixel limit in force (see ``max_pixels``)."""
        from PIL import Image

        if self.max_pixels:
            return self.max_pixels
        return max(DEFAULT_MAX_PIXELS, 2 * (Image.MAX_IMAGE_PIXELS or 0)) if self.resize_max else DEFAULT_MAX_PIXELS


@dataclass
class ReadReport:
    """What a reader left out (reason -> count) and how much text needed a fallback encoding."""

    skipped: Counter = field(default_factory=Counter)
    text_fallback: int = 0


@dataclass
class ConvertResult:
    """Summary of one conversion."""

    split: str
    stats: SplitStats
    skipped: Counter
    text_fallback: int
    reencoded: int
    info: dict[str, Any]

    def summary(self) -> str:
        """Human-readable lines: samples per task, what was skipped and why."""
        lines = [f"{self.split}: wrote {self.stats.samples} samples in {len(self.stats.shards)} shard(s)"]
        for task in TASK_FIELDS:
            if self.stats.tasks.get(task):
                lines.append(f"  {task}: {self.stats.tasks[task]}")
        lines.append(f"  images re-encoded: {self.reencoded}")
        if self.text_fallback:
            lines.append(f"  text lines decoded with a non-UTF-8 fallback ({'/'.join(FALLBACK_ENCODINGS)}): "
                         f"{self.text_fallback}")
        if self.skipped:
            lines.append(f"  skipped: {sum(self.skipped.values())}")
            lines.extend(f"    {reason}: {count}" for reason, count in self.skipped.most_common())
            if self.skipped.get("decompression_bomb"):
                lines.append("    (images over the pixel limit convert with --resize-max, which shrinks them on the way in)")
        else:
            lines.append("  skipped: 0")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# text helpers


def decode_text(data: bytes) -> tuple[str, int]:
    """Bytes -> text: UTF-8 when possible, else per line with a fallback; returns (text, fallback lines)."""
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        pass
    lines, fallback = [], 0
    for line in data.splitlines(keepends=True):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            fallback += 1
            lines.append(_decode_fallback(line))
    text = "".join(lines)
    return (text[1:] if text.startswith("\ufeff") else text), fallback


def _decode_fallback(line: bytes) -> str:
    for encoding in FALLBACK_ENCODINGS:
        try:
            return line.decode(encoding)
        except UnicodeDecodeError:
            continue
    return line.decode("latin-1")  # unreachable: latin-1 maps every byte


def read_text_file(path: Path, what: str) -> tuple[str, int]:
    """Read a text input file, with a clear error when it is missing."""
    if not path.is_file():
        raise MMTLError(f"{what} file not found: {path}")
    return decode_text(path.read_bytes())


def clean_text(value: Any) -> str:
    """Collapse whitespace (COCO captions carry newlines and trailing spaces)."""
    return " ".join(str(value).split())


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class KeyMaker:
    """Webdataset-safe unique keys (no dots, which webdataset reads as an extension separator)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        base = _KEY_UNSAFE.sub("_", name).strip("_") or "sample"
        key, n = base, 1
        while key in self.used:
            n += 1
            key = f"{base}_{n}"
        self.used.add(key)
        return key


# ---------------------------------------------------------------------------------------------
# readers


def _load_json(path: Path, what: str, report: ReadReport) -> Any:
    text, fallback = read_text_file(path, what)
    report.text_fallback += fallback
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MMTLError(f"{what} file {path} is not valid JSON: {exc}") from None


def read_coco(images: Path, captions: Path, instances: Path | None, report: ReadReport) -> tuple[list[Record], list[str]]:
    """COCO captions (+ instances) JSON -> one record per image with its captions and category names.

    Images with neither captions nor categories are left out (``no_annotations``). Returns the
    records and the category names in category-id order.
    """
    if not images.is_dir():
        raise MMTLError(f"--images directory not found: {images}")
    documents = [_load_json(captions, "--captions", report)]
    if instances is not None:
        documents.append(_load_json(instances, "--instances", report))
    for path, doc in zip([captions, instances], documents):
        if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
            raise MMTLError(f"{path} is not a COCO annotation file (needs 'images' and 'annotations')")
    image_files: dict[int, str] = {}
    for doc in documents:
        for image in doc["images"]:
            image_files[image["id"]] = image["file_name"]
    caption_lists: dict[int, list[str]] = {}
    for ann in documents[0]["annotations"]:
        text = clean_text(ann.get("caption", ""))
        if text:
            caption_lists.setdefault(ann["image_id"], []).append(text)
    categories: list[str] = []
    label_sets: dict[int, set[str]] = {}
    if instances is not None:
        names = {c["id"]: c["name"] for c in sorted(documents[1].get("categories", []), key=lambda c: c["id"])}
        categories = list(names.values())
        for ann in documents[1]["annotations"]:
            if ann.get("category_id") in names:
                label_sets.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    keys = KeyMaker()
    records = []
    for image_id, file_name in sorted(image_files.items()):
        annotation: dict[str, Any] = {"source": "coco", "image_id": image_id}
        if caption_lists.get(image_id):
            annotation["captions"] = caption_lists[image_id]
        if label_sets.get(image_id):
            annotation["labels"] = sorted(label_sets[image_id])
        if not supervised_tasks(annotation):
            report.skipped["no_annotations"] += 1
            continue
        records.append(Record(keys(Path(file_name).stem), annotation, str(images / file_name)))
    return records, categories


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


def parse_mapping(items: Iterable[str]) -> dict[str, list[str]]:
    """``field=column[,column...]`` options -> {field: [columns]} (several columns form one list)."""
    mapping: dict[str, list[str]] = {}
    for item in items:
        name, sep, columns = item.partition("=")
        if not sep or not columns.strip():
            raise MMTLError(f"--map {item!r}: expected FIELD=COLUMN[,COLUMN...]")
        if name not in TABLE_FIELDS:
            raise MMTLError(f"--map {item!r}: unknown field {name!r}; valid fields: {', '.join(TABLE_FIELDS)}")
        mapping[name] = [c.strip() for c in columns.split(",") if c.strip()]
    return mapping


def _as_list(value: Any, is_csv: bool) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [clean_text(v) for v in value if clean_text(v)]
    text = str(value).strip()
    if is_csv and text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [clean_text(v) for v in parsed if clean_text(v)]
        except json.JSONDecodeError:
            pass
    parts = text.split("|") if is_csv else [text]  # CSV cells hold lists as a|b|c (or a JSON list)
    return [clean_text(p) for p in parts if clean_text(p)]


def _row_field(row: dict[str, Any], name: str, mapping: dict[str, list[str]], is_csv: bool) -> Any:
    columns = mapping.get(name, [name])
    values = [row.get(c) for c in columns if row.get(c) not in (None, "")]
    if not values:
        return None
    if name in _LIST_FIELDS:
        return [v for value in values for v in _as_list(value, is_csv)]
    # a list (e.g. sentences) or several columns become one text
    parts = [" ".join(clean_text(x) for x in v) if isinstance(v, list) else clean_text(v) for v in values]
    return " ".join(p for p in parts if p)


def read_table(path: Path, fmt: str, image_root: Path | None, mapping: dict[str, list[str]],
               report: ReadReport) -> list[Record]:
    """JSONL or CSV rows with the fields of :data:`TABLE_FIELDS` (renamed with ``--map``) -> records."""
    text, fallback = read_text_file(path, "--input")
    report.text_fallback += fallback
    rows: list[dict[str, Any] | None] = []
    if fmt == "jsonl":
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            rows.append(row if isinstance(row, dict) else None)
    else:
        rows.extend(csv.DictReader(io.StringIO(text)))
    missing_columns = [c for cols in mapping.values() for c in cols]
    present = set().union(*(r.keys() for r in rows if r)) if rows else set()
    unknown = [c for c in missing_columns if c not in present]
    if rows and unknown:
        raise MMTLError(f"--map names column(s) not in {path}: {', '.join(unknown)}; "
                        f"columns: {', '.join(sorted(present))}")
    base = image_root or path.parent
    keys = KeyMaker()
    records = []
    for number, row in enumerate(rows):
        if row is None:
            report.skipped["malformed_row"] += 1
            continue
        annotation = {}
        for name in ("labels", "captions", "document", "summaries", "source"):
            value = _row_field(row, name, mapping, fmt == "csv")
            if value:
                annotation[name] = value
        count = _row_field(row, "count", mapping, fmt == "csv")
        if count not in (None, ""):
            try:
                annotation["count"] = int(count)
            except (TypeError, ValueError):
                report.skipped["malformed_row"] += 1
                continue
        image = _row_field(row, "image", mapping, fmt == "csv")
        extras = {name: str(base / value) for name in EXTRA_FILE_FIELDS
                  if (value := _row_field(row, name, mapping, fmt == "csv"))}
        if not supervised_tasks(annotation):
            report.skipped["no_annotations"] += 1
            continue
        key = _row_field(row, "key", mapping, fmt == "csv") or (Path(image).stem if image else f"row{number:08d}")
        records.append(Record(keys(str(key)), annotation, str(base / image) if image else None, extras))
    return records


def prepare_extra(name: str, path: str) -> tuple[str, bytes]:
    """(sample key, bytes) of a further modality's file: depth maps are stored as PNG (``depth.png``, re-encoded
    when the source is another format), audio as it is under ``wav`` / ``flac``. Raises CorruptSampleError."""
    data = Path(path).read_bytes()
    if name == "depth":
        image = load_pixels(open_image(data))
        if image.format == "PNG":
            return "depth.png", data
        buffer = io.BytesIO()
        (image if image.mode in ("L", "I;16", "I") else to_rgb(image).convert("L")).save(buffer, format="PNG")
        return "depth.png", buffer.getvalue()
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise CorruptSampleError("undecodable_audio", f"{path}: audio must be {' or '.join(AUDIO_SUFFIXES)}")
    import soundfile

    try:
        soundfile.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001  libsndfile reports bad streams as several types
        raise CorruptSampleError("undecodable_audio", f"{path}: {exc}") from None
    return suffix[1:], data


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
    if record.image_path is None:
        return _with_extras(record, None, False)
    try:
        data = Path(record.image_path).read_bytes()
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
            key, data = prepare_extra(name, path)
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
                   "resize_max": options.resize_max, "jpeg_quality": options.jpeg_quality}
    merged_classes = _merge_classes(info_path, classes)
    info = write_dataset_info(out, name, {options.split: stats}, merged_classes, all_options,
                              extra={"label_mode": label_mode})
    return ConvertResult(options.split, stats, skipped, report.text_fallback, counters["reencoded"], info)


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


def convert_source(fmt: str, options: ConvertOptions, *, images: str | None = None, captions: str | None = None,
                   instances: str | None = None, root: str | None = None, input: str | None = None,
                   image_root: str | None = None, mapping: Iterable[str] = (), label_mode: str | None = None,
                   name: str | None = None) -> ConvertResult:
    """Read a source of format ``fmt`` and write it as one split (the ``mmtl data convert`` action)."""
    report = ReadReport()
    required: dict[str, dict[str, Any]] = {
        "coco": {"--images": images, "--captions": captions}, "imagefolder": {"--root": root},
        "jsonl": {"--input": input}, "csv": {"--input": input},
    }
    if fmt not in FORMATS:
        raise MMTLError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    missing = [flag for flag, value in required[fmt].items() if not value]
    if missing:
        raise MMTLError(f"--format {fmt} needs {' and '.join(missing)}")
    if label_mode not in (None, "single", "multi"):
        raise MMTLError(f"--label-mode must be 'single' or 'multi', got {label_mode!r}")
    reader: Callable[[], tuple[list[Record], list[str] | None]]
    if fmt == "coco":
        reader = lambda: read_coco(Path(images), Path(captions), Path(instances) if instances else None, report)  # noqa: E731
        source_options = {"format": fmt, "images": images, "captions": captions, "instances": instances}
        default_mode, default_name = "multi", "coco"
    elif fmt == "imagefolder":
        reader = lambda: read_imagefolder(Path(root), report)  # noqa: E731
        source_options = {"format": fmt, "root": root}
        default_mode, default_name = "single", Path(root).name
    else:
        columns = parse_mapping(mapping)
        reader = lambda: (read_table(Path(input), fmt, Path(image_root) if image_root else None, columns, report), None)  # noqa: E731
        source_options = {"format": fmt, "input": input, "image_root": image_root, "map": columns}
        default_mode, default_name = "multi", Path(input).stem
    records, classes = reader()
    mode = label_mode or default_mode
    if mode == "single":
        several = sum(1 for r in records if len(r.annotation.get("labels", [])) > 1)
        if several:
            raise MMTLError(f"--label-mode single, but {several} sample(s) have several labels")
    return convert(records, report, options, name=name or default_name, classes=classes, label_mode=mode,
                   reader_options=source_options)
