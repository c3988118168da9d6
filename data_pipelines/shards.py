"""Writing webdataset shards and the ``dataset.json`` that describes them."""
from __future__ import annotations

import io
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import webdataset as wds
from PIL import Image

from data_pipelines import shardsets
from data_pipelines.fieldmap import Mapping
from data_pipelines.sample import class_names, supervised_tasks
from data_pipelines.transforms import CorruptSampleError, parse_annotation
from mmtl.errors import MMTLError

DATASET_FILE = "dataset.json"


@dataclass
class SplitStats:
    """What was written for one split."""

    samples: int = 0
    shards: list[str] = field(default_factory=list)
    tasks: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # input items left out, by reason (converters)

    def to_dict(self) -> dict[str, Any]:
        """The split's entry in ``dataset.json`` (``skipped`` only when something was)."""
        out = {"samples": self.samples, "shards": self.shards, "tasks": dict(self.tasks)}
        return {**out, "skipped": dict(self.skipped)} if self.skipped else out


def encode_image(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes (lossless: synthetic colours stay exact)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(
    out_dir: Path, split: str, samples: Iterable[dict[str, Any]], shard_size: int = 1000
) -> SplitStats:
    """Write ``samples`` (webdataset dicts with ``__key__`` and a ``json`` dict) as ``{split}-NNNNNN.tar``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = SplitStats()
    pattern = str(out_dir / f"{split}-%06d.tar")
    # a whole-second mtime: webdataset's default float time adds a pax header to every member, which
    # makes reading the shards ~20% slower
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=int(time.time())) as sink:
        for sample in samples:
            annotation = sample["json"]
            stats.samples += 1
            stats.tasks.update(supervised_tasks(annotation))
            stats.classes.update(class_names(annotation))
            sink.write({**sample, "json": json.dumps(annotation).encode("utf-8")})
        written = sink.shard  # shards opened so far (the writer deletes this attribute on close)
    stats.shards = [Path(pattern % i).name for i in range(written)]
    return stats


def write_dataset_info(
    out_dir: Path, name: str, splits: dict[str, SplitStats], classes: list[str] | None, options: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (or update, keeping other splits) ``dataset.json`` beside the shards and return it.

    ``extra``: further top-level fields (e.g. ``label_mode``). Each split also records the command
    that wrote it, since splits may come from separate runs.
    """
    path = out_dir / DATASET_FILE
    info: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"name": name, "splits": {}}
    command = " ".join(shlex.quote(a) for a in sys.argv)
    for split, stats in splits.items():
        info["splits"][split] = {**stats.to_dict(), "command": command}
    seen = set(info.get("classes", [])) | {c for s in splits.values() for c in s.classes}
    info["classes"] = classes if classes is not None else sorted(seen)
    info.update(extra or {})
    info["written_by"] = {"command": command, "options": options}
    path.write_text(json.dumps(info, indent=2))
    return info


def as_mapping(mapping: Mapping | Iterable[str] | None) -> Mapping:
    """A parsed mapping, from ``data.map`` items (``FIELD=PATH``) or an already parsed one."""
    if isinstance(mapping, dict):
        return mapping
    return shardsets.shard_mapping(list(mapping or ()))


def is_native(path: str | Path) -> bool:
    """A shard directory mmtl wrote (it has a ``dataset.json``)."""
    return (Path(str(path)) / DATASET_FILE).is_file()


def read_dataset_info(path: str | Path, mapping: Mapping | Iterable[str] | None = None) -> dict[str, Any]:
    """``dataset.json`` of a shard directory; for shards without one (a directory of tars, a tar, a
    brace pattern, a ``pipe:``), the same fields from a cached scan with ``mapping`` (see
    :mod:`data_pipelines.shardsets`)."""
    directory = Path(str(path))
    info_path = directory / DATASET_FILE
    if not info_path.is_file():
        return shardsets.describe(path, as_mapping(mapping))
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as exc:
        raise MMTLError(f"{info_path} is not valid JSON: {exc}") from None


def split_entry(info: dict[str, Any], split: str, path: str | Path) -> dict[str, Any]:
    """The counts of ``split`` in ``info`` (a set with one unnamed split answers to every name)."""
    splits = info.get("splits", {})
    if split in splits:
        return splits[split]
    if info.get("any_split"):
        return next(iter(splits.values()))
    raise MMTLError(f"split {split!r} not in {path}; available: {', '.join(sorted(splits))}")


def split_shards(path: str | Path, split: str) -> list[str]:
    """Shard file paths (URLs, for a ``pipe:``) of one split, checked to exist."""
    if not is_native(path):
        return shardsets.resolve(path).urls(split)
    info = read_dataset_info(path)
    urls = [str(Path(path) / name) for name in split_entry(info, split, path)["shards"]]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise MMTLError(f"shard files listed in dataset.json are missing: {', '.join(missing[:3])}")
    if not urls:
        raise MMTLError(f"split {split!r} in {path} has no shards")
    return urls


def raw_samples(path: str | Path, split: str, mapping: Mapping | Iterable[str] | None = None,
                handler: Any = shardsets.refuse_unreadable_shards) -> Iterator[dict[str, Any]]:
    """Raw samples of a split in order, in the sample contract (shards without dataset.json are mapped);
    by default a shard that cannot be opened is an error, a damaged member is skipped."""
    urls = split_shards(path, split)
    return shardsets.contract_samples(urls, None if is_native(path) else as_mapping(mapping), handler)


def iter_annotations(path: str | Path, split: str, limit: int = 0, mapping: Mapping | Iterable[str] | None = None
                     ) -> Iterator[dict[str, Any]]:
    """Stream only the ``json`` annotations of a split (images are not decoded; corrupt ones are left out)."""
    count = 0
    for sample in raw_samples(path, split, mapping):
        try:
            annotation = parse_annotation(sample.get("json"))
        except CorruptSampleError:
            continue
        yield annotation
        count += 1
        if limit and count >= limit:
            return
