"""Prediction over many pairs: a JSONL file or an image folder in, JSONL out.

Resumable (ids already in the output are skipped; the output is appended to and flushed per
batch) and tolerant (a bad row is written with its ``error`` and the rest go on).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from data_pipelines.transforms import IMAGE_SUFFIXES
from mmtl.errors import MMTLError, os_error_message
from mmtl.inference import PredictOptions, Predictor
from mmtl.registry import MODALITIES

log = logging.getLogger(__name__)


def further_modalities() -> list[str]:
    """Registered modality names besides image and text (JSONL fields holding their file paths)."""
    return [name for name in MODALITIES.keys() if name not in ("image", "text")]


@dataclass
class Pair:
    """One input row: ``image`` is a resolved path; ``error`` is set when the row itself is unreadable."""

    id: str
    image: str | None = None
    text: str | None = None
    error: str | None = None
    # files of the model's further modalities by name (e.g. "depth"), resolved like ``image``
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchSummary:
    """What a batch run did."""

    total: int
    skipped: int
    written: int
    errors: int


def read_jsonl_pairs(path: str | Path, allow_outside: bool = False) -> Iterator[Pair]:
    """Pairs from a JSONL file with fields ``image`` (relative to the file's folder), ``text``, ``id``,
    and a path field per further modality (``depth``, ``audio``: any registered modality name).

    A row without ``id`` gets ``line-N``. An unreadable row becomes a Pair with ``error`` set, and so
    does a row whose file path leads outside the file's folder (absolute, ``../``, a link out)
    unless ``allow_outside``.
    """
    path = Path(path)
    if not path.is_file():
        raise MMTLError(f"--input file not found: {path}")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise MMTLError(f"cannot read --input {os_error_message(exc)}") from exc
    return _iter_jsonl(path, allow_outside)


def resolve_inside(base: Path, value: str, allow_outside: bool) -> str:
    """``base / value`` as a string; MMTLError when it leads outside ``base`` and that is not allowed."""
    target = base / value
    if not allow_outside and not target.resolve().is_relative_to(base.resolve()):
        raise MMTLError(f"path {value[:200]!r} leads outside {base} (pass --allow-outside-paths to read it)")
    return str(target)


def _iter_jsonl(path: Path, allow_outside: bool = False) -> Iterator[Pair]:
    base = path.parent
    names = further_modalities()
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            fallback = f"line-{n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield Pair(fallback, error=f"line {n}: not UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield Pair(fallback, error=f"line {n}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield Pair(fallback, error=f"line {n}: expected a JSON object, got {type(row).__name__}")
                continue
            pair_id = row.get("id")
            pair_id = fallback if pair_id is None or pair_id == "" else str(pair_id)
            image, text = row.get("image"), row.get("text")
            further = {name: row[name] for name in names if row.get(name) is not None}
            bad_path = next((name for name, value in {"image": image, **further}.items()
                             if value is not None and not isinstance(value, str)), None)
            if bad_path is not None:
                yield Pair(pair_id, error=f"line {n}: '{bad_path}' must be a path string")
            elif text is not None and not isinstance(text, str):
                yield Pair(pair_id, error=f"line {n}: 'text' must be a string")
            else:
                try:
                    yield Pair(pair_id, resolve_inside(base, image, allow_outside) if image else None, text,
                               inputs={name: resolve_inside(base, value, allow_outside) for name, value in further.items()})
                except MMTLError as exc:
                    yield Pair(pair_id, error=f"line {n}: {exc}")


def image_dir_pairs(directory: str | Path, text: str | None = None) -> list[Pair]:
    """One pair per image file under ``directory`` (recursive, sorted); the id is the relative path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MMTLError(f"--images directory not found: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MMTLError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return [Pair(p.relative_to(directory).as_posix(), str(p), text) for p in files]


def count_rows(path: str | Path) -> int:
    """Non-empty lines of a JSONL file (for the progress bar)."""
    with Path(path).open("rb") as f:
        return sum(1 for line in f if line.strip())


def done_ids(output: Path) -> set[str]:
    """Ids already in ``output``, which is made ready for appending.

    A last line without a newline is kept (and ended) when it is a whole JSON row; a partial one
    from an interrupted write is moved to ``OUTPUT.partial`` instead of being lost.
    """
    if not output.exists():
        return set()
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    if end < len(data):
        tail = data[end:]
        if _row_id(tail) is not None or _is_json(tail):
            with output.open("ab") as f:
                f.write(b"\n")
            lines.append(tail)
        else:
            partial = output.with_name(output.name + ".partial")
            with partial.open("ab") as f:
                f.write(tail + b"\n")
            with output.open("r+b") as f:
                f.truncate(end)
            log.warning("moved a partial last line of %s to %s", output, partial)
    return {row_id for row_id in map(_row_id, lines) if row_id is not None}


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _row_id(line: bytes) -> str | None:
    """The ``id`` of a JSON row, or None."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return str(row["id"]) if isinstance(row, dict) and "id" in row else None


def _predict_chunk(predictor: Predictor, chunk: list[Pair], options: PredictOptions) -> list[dict]:
    """Rows for ``chunk`` in order: predictions, or ``{"id", "error"}`` for rows that failed."""
    rows: list[dict | None] = [None] * len(chunk)
    ready, examples = [], []
    for i, pair in enumerate(chunk):
        if pair.error:
            rows[i] = {"id": pair.id, "error": pair.error}
            continue
        try:
            examples.append(predictor.prepare(pair.image, pair.text, key=pair.id, inputs=pair.inputs))
            ready.append(i)
        except MMTLError as exc:
            rows[i] = {"id": pair.id, "error": str(exc)}
    try:
        results = predictor.run(examples, options)
    except Exception as exc:  # noqa: BLE001 - isolate the failing row instead of losing the batch
        log.warning("batch failed (%s); retrying its rows one at a time", exc)
        results = []
        for example in examples:
            try:
                results.append(predictor.run([example], options)[0])
            except Exception as row_exc:  # noqa: BLE001
                results.append(row_exc)
    for i, result in zip(ready, results):
        pair_id = chunk[i].id
        if isinstance(result, Exception):
            rows[i] = {"id": pair_id, "error": f"prediction failed: {result.__class__.__name__}: {result}"}
        else:
            rows[i] = {"id": pair_id, **result.to_dict()}
    return [row for row in rows if row is not None]


def predict_to_jsonl(predictor: Predictor, pairs: Iterable[Pair], output: str | Path, options: PredictOptions,
                     batch_size: int = 16, total: int | None = None, progress: bool = True) -> BatchSummary:
    """Predict ``pairs`` in batches, appending one JSON line per pair to ``output``."""
    if batch_size < 1:
        raise MMTLError(f"--batch-size must be >= 1, got {batch_size}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    seen = done_ids(output)
    summary = BatchSummary(0, 0, 0, 0)
    with output.open("a", encoding="utf-8") as out, tqdm(total=total, unit="pair", disable=not progress,
                                                        file=sys.stderr, dynamic_ncols=True) as bar:

        def flush(chunk: list[Pair]) -> None:
            for row in _predict_chunk(predictor, chunk, options):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.written += 1
                summary.errors += "error" in row
            out.flush()
            bar.update(len(chunk))
            bar.set_postfix(errors=summary.errors)

        chunk: list[Pair] = []
        for pair in pairs:
            summary.total += 1
            if pair.id in seen:  # done in an earlier run, or a duplicate id in this input
                summary.skipped += 1
                bar.update(1)
                continue
            seen.add(pair.id)
            chunk.append(pair)
            if len(chunk) == batch_size:
                flush(chunk)
                chunk = []
        flush(chunk)
    return summary
