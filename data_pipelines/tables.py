"""Table readers for ``mmtl data convert``: JSONL, CSV and Parquet rows -> :class:`Record` s.

Rows carry the fields of :data:`~data_pipelines.fieldmap.MAPPABLE_FIELDS`, renamed or dug out of
nested values with ``--map`` (see :mod:`data_pipelines.fieldmap`). Image and file fields are paths
relative to ``--image-root`` (default: the input's folder) that must stay inside it unless
``--allow-outside-root``; a Parquet image column may also hold the encoded bytes (or the
``{"bytes", "path"}`` struct that Hugging Face ``datasets`` writes).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.fieldmap import (
    ANNOTATION_FIELDS, Mapping, consumed_columns, lookup, mapping_warnings, read_field, root_key,
)
from data_pipelines.records import KeyMaker, ReadReport, Record, confined_path, read_text_file
from data_pipelines.sample import supervised_tasks
from mmtl.errors import MMTLError

TABLE_FORMATS = ("jsonl", "csv", "parquet")
EXTRA_FILE_FIELDS = ("depth", "audio")  # row fields naming files of further modalities (paths like image)


def iter_rows(path: Path, fmt: str, report: ReadReport) -> Iterator[dict[str, Any] | None]:
    """The rows of a JSONL, CSV or Parquet file (None for a JSONL line that is not an object)."""
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
    text, fallback = read_text_file(path, "--input")
    report.text_fallback += fallback
    if fmt == "csv":
        yield from csv.DictReader(io.StringIO(text))
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield row if isinstance(row, dict) else None


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
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


def read_table(path: Path, fmt: str, image_root: Path | None, mapping: Mapping, report: ReadReport,
               allow_outside_root: bool = False) -> list[Record]:
    """Rows of a JSONL, CSV or Parquet file (fields renamed with ``mapping``) -> records."""
    rows = list(iter_rows(path, fmt, report))
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
        record = _row_record(row, number, fmt == "csv", mapping, consumed, base, allow_outside_root, report)
        if record is not None:
            record.key = keys(record.key)
            records.append(record)
    return records


def _row_record(row: dict[str, Any] | None, number: int, is_csv: bool, mapping: Mapping, consumed: frozenset[str],
                base: Path, allow_outside: bool, report: ReadReport) -> Record | None:
    """One row -> a record, or None with the reason counted in ``report``."""
    if row is None:
        report.skipped["malformed_row"] += 1
        return None
    annotation: dict[str, Any] = {}
    for name in ANNOTATION_FIELDS:
        value, nulls = read_field(row, name, mapping, is_csv, consumed)
        if name == "labels":
            report.null_labels += nulls
        if value:
            annotation[name] = value
    count, _ = read_field(row, "count", mapping, is_csv, consumed)
    if count not in (None, ""):
        try:
            annotation["count"] = int(count)
        except (TypeError, ValueError):
            report.skipped["malformed_row"] += 1
            return None
    if not supervised_tasks(annotation):
        report.skipped["no_annotations"] += 1
        return None
    image = _raw_field(row, "image", mapping, consumed)
    image_bytes, image_name = _image_value(image)
    files = {name: str(value) for name in EXTRA_FILE_FIELDS if (value := _raw_field(row, name, mapping, consumed))}
    image_path = confined_path(base, image_name, allow_outside) if image_name else None
    extras = {name: confined_path(base, value, allow_outside) for name, value in files.items()}
    if (image_name and image_path is None) or None in extras.values():
        report.skipped["path_outside_root"] += 1
        return None
    key, _ = read_field(row, "key", mapping, is_csv, consumed)
    key = key or (Path(image_name).stem if image_name else f"row{number:08d}")
    return Record(str(key), annotation, None if image_bytes else image_path, extras, image_bytes=image_bytes)


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
