"""Table readers for ``mmtl data convert``: JSONL, CSV and Parquet rows -> :class:`Record` s.

Rows carry the fields of :func:`~data_pipelines.fieldmap.mappable_fields`, renamed or dug out of
nested values with ``--map`` (see :mod:`data_pipelines.fieldmap`). Image and file fields are paths
relative to ``--image-root`` (default: the input's folder) that must stay inside it unless
``--allow-outside-root``; a Parquet image column may also hold the encoded bytes (or the
``{"bytes", "path"}`` struct that Hugging Face ``datasets`` writes).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.convert.formats import FORMATS
from data_pipelines.convert.records import (
    ALLOW_OUTSIDE_ROOT, KeyMaker, ReadReport, Record, SourceFormat, SourceOption, confined_path, read_text_file,
)
from data_pipelines.fieldmap import (
    Mapping, consumed_columns, lookup, mapping_warnings, parse_mapping, read_field, root_key,
)
from data_pipelines.fields import MalformedValue, is_present
from data_pipelines.sample import annotation_fields, file_fields, supervised_tasks
from mmtl.errors import MMTLError


def _text_rows(path: Path, report: ReadReport) -> str:
    text, fallback = read_text_file(path, "--input")
    report.text_fallback += fallback
    return text


def _jsonl_rows(path: Path, report: ReadReport) -> Iterator[dict[str, Any] | None]:
    """The objects of a JSONL file (None for a line that is not an object)."""
    for line in _text_rows(path, report).splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield row if isinstance(row, dict) else None


def _csv_rows(path: Path, report: ReadReport) -> Iterator[dict[str, Any]]:
    yield from csv.DictReader(io.StringIO(_text_rows(path, report)))


def _parquet_rows(path: Path, report: ReadReport) -> Iterator[dict[str, Any]]:
    import pyarrow
    import pyarrow.parquet as pq

    if not path.is_file():
        raise MMTLError(f"--input file not found: {path}")
    try:
        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=256):
            yield from batch.to_pylist()
    except (pyarrow.ArrowException, OSError) as exc:
        raise MMTLError(f"{path} is not a readable Parquet file: {exc}") from None


@dataclass(frozen=True)
class TableKind:
    """How one kind of table file is read: its rows, and whether a cell holds a list as text (``a|b|c``)."""

    rows: Callable[[Path, ReadReport], Iterator[dict[str, Any] | None]]
    cells_hold_lists: bool = False


TABLE_KINDS: dict[str, TableKind] = {
    "jsonl": TableKind(_jsonl_rows),
    "csv": TableKind(_csv_rows, cells_hold_lists=True),
    "parquet": TableKind(_parquet_rows),
}


def read_table(path: Path, fmt: str, image_root: Path | None, mapping: Mapping, report: ReadReport,
               allow_outside_root: bool = False) -> list[Record]:
    """Rows of a JSONL, CSV or Parquet file (fields renamed with ``mapping``) -> records."""
    kind = TABLE_KINDS[fmt]
    rows = list(kind.rows(path, report))
    present = set().union(*(r.keys() for r in rows if r)) if rows else set()
    unknown = sorted({root_key(p) for paths in mapping.values() for p in paths} - present)
    if rows and unknown:
        raise MMTLError(f"--map names column(s) not in {path}: {', '.join(unknown)}; "
                        f"columns: {', '.join(sorted(map(str, present)))}")
    report.warnings.extend(mapping_warnings(mapping))
    base = image_root or path.parent
    consumed = consumed_columns(mapping)
    keys = KeyMaker()
    records = []
    for number, row in enumerate(rows):
        record = _row_record(row, number, kind.cells_hold_lists, mapping, consumed, base, allow_outside_root, report)
        if record is not None:
            record.key = keys(record.key)
            records.append(record)
    return records


def _row_record(row: dict[str, Any] | None, number: int, is_csv: bool, mapping: Mapping, consumed: frozenset[str],
                base: Path, allow_outside: bool, report: ReadReport) -> Record | None:
    """One row -> a record, or None with the reason counted in ``report``."""
    annotation = None if row is None else _row_annotation(row, is_csv, mapping, consumed, report)
    if annotation is None:
        report.skipped["malformed_row"] += 1
        return None
    if not supervised_tasks(annotation):
        report.skipped["no_annotations"] += 1
        return None
    image = _raw_field(row, "image", mapping, consumed)
    image_bytes, image_name = _image_value(image)
    files = {name: str(value) for name in file_fields() if (value := _raw_field(row, name, mapping, consumed))}
    image_path = confined_path(base, image_name, allow_outside) if image_name else None
    extras = {name: confined_path(base, value, allow_outside) for name, value in files.items()}
    if (image_name and image_path is None) or None in extras.values():
        report.skip_outside_root(base)
        return None
    key, _ = read_field(row, "key", mapping, is_csv, consumed)
    key = key or (Path(image_name).stem if image_name else f"row{number:08d}")
    return Record(str(key), annotation, None if image_bytes else image_path, extras, image_bytes=image_bytes)


def _row_annotation(row: dict[str, Any], is_csv: bool, mapping: Mapping, consumed: frozenset[str],
                    report: ReadReport) -> dict[str, Any] | None:
    """The annotation fields of one row, each read as its declared kind; None when a value does not fit its
    kind (``count=three``)."""
    annotation: dict[str, Any] = {}
    for field in annotation_fields():
        try:
            value, nulls = read_field(row, field.name, mapping, is_csv, consumed)
        except MalformedValue:
            return None
        if field.kind.holds_classes:
            report.null_labels += nulls
        if is_present(value):
            annotation[field.name] = value
    return annotation


def _raw_field(row: dict[str, Any], name: str, mapping: Mapping, consumed: frozenset[str]) -> Any:
    """The first value of a file field as it is (bytes stay bytes), None when absent."""
    if name not in mapping and name in consumed:
        return None
    for path in mapping.get(name, [name]):
        for value in lookup(row, path):
            if value not in ("", b""):
                return value
    return None


def _image_value(value: Any) -> tuple[bytes | None, str | None]:
    """(encoded bytes, file name) of an image field: a path, bytes, or a ``{"bytes", "path"}`` struct."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        return (bytes(data), None) if data else (None, str(name) if name else None)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    return (None, str(value)) if value is not None else (None, None)


TABLE_OPTIONS = (
    SourceOption("input", "jsonl/csv/parquet: the rows (fields image, labels, captions, document, summaries, source, "
                 "key; depth (a depth map file), audio (a wav/flac file), count)", required=True),
    SourceOption("image_root", "jsonl/csv/parquet: directory the image paths are relative to (default: the input's)"),
    SourceOption("mapping", "jsonl/csv/parquet: read FIELD from column(s) or nested paths, e.g. --map document=dialogue "
                 "--map summaries=summary1,summary2 --map summaries=summary.outcome --map captions=annotations[].text",
                 action="append", metavar="FIELD=PATH[,PATH]", flag="--map"),
    ALLOW_OUTSIDE_ROOT,
)


def _reader(fmt: str) -> Callable[[dict[str, Any], ReadReport], tuple[list[Record], None]]:
    def read(inputs: dict[str, Any], report: ReadReport) -> tuple[list[Record], None]:
        root = Path(inputs["image_root"]) if inputs.get("image_root") else None
        records = read_table(Path(inputs["input"]), fmt, root, parse_mapping(inputs.get("mapping") or ()), report,
                             bool(inputs.get("allow_outside_root")))
        return records, None
    return read


# one format per kind of table file
TABLES: dict[str, SourceFormat] = {
    fmt: FORMATS.register(fmt)(SourceFormat(TABLE_OPTIONS, _reader(fmt), "multi",
                                            lambda inputs: Path(inputs["input"]).stem))
    for fmt in TABLE_KINDS
}
