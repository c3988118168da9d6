"""Shard sets without a ``dataset.json``: the webdataset shards the ecosystem already has.

img2dataset and open_clip write ``NNNNN.tar`` files of ``jpg``/``png``/``webp`` + ``txt`` caption +
``json`` metadata. A *shard set reference* names them the way webdataset does:

* a directory of ``.tar`` files (``train-*.tar`` / ``val-*.tar`` / ``test-*.tar`` form splits; other
  names form one split),
* one ``.tar`` file,
* a brace pattern (``shards/{00000..00999}.tar``) or several joined by ``::`` (a YAML list in a config),
* a ``pipe:`` command whose stdout is a tar (``pipe:cat shards/{00000..00009}.tar``), only with the
  user's opt-in (:mod:`data_pipelines.pipes`).

A field mapping (:mod:`data_pipelines.fieldmap`, ``data.map``) turns each raw sample into the sample
contract. PATHs start at a member of the sample (``txt``, ``cls``, ``json.caption``); a PATH that
names no member is read from the ``json`` member (``labels=label`` == ``labels=json.label``).
Without a mapping, contract fields already in the ``json`` are kept, ``txt`` feeds ``captions`` and
``cls`` feeds ``labels``. Counts and classes come from one scan, cached beside the shards (or under
``$XDG_CACHE_HOME/mmtl/scans`` when that folder is read-only).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import webdataset as wds

from data_pipelines import scancache
from data_pipelines.fieldmap import Mapping, field_value, lookup, parse_mapping
from data_pipelines.fields import MalformedValue, is_present
from data_pipelines.pipes import check_pipes, is_pipe, opened
from data_pipelines.sample import annotation_fields, class_fields, class_names, supervised_tasks
from data_pipelines.transforms import CorruptSampleError, parse_annotation
from mmtl.errors import MMTLError, os_error_message

ANY_SPLIT = "all"  # the one split of a set whose files name none
SPLIT_NAMES = ("train", "val", "valid", "validation", "dev", "test", "eval")
SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
_SPLIT_FILE = re.compile(r"^([A-Za-z]+)[-_.]")


@dataclass(frozen=True)
class ShardSet:
    """Where the shards of one reference are, per split."""

    reference: str
    name: str
    splits: dict[str, list[str]]
    home: Path | None  # the folder the shards live in (for the scan cache), None for pipes

    @property
    def any_split(self) -> bool:
        """One split that answers to every split name (the files name none)."""
        return list(self.splits) == [ANY_SPLIT]

    def urls(self, split: str) -> list[str]:
        """Shard URLs of ``split`` (any name, when the set has one unnamed split)."""
        if split in self.splits:
            return self.splits[split]
        if self.any_split:
            return self.splits[ANY_SPLIT]
        raise MMTLError(f"split {split!r} not in {self.reference}; available: {', '.join(sorted(self.splits))}")


def is_shard_file(path: str | Path) -> bool:
    """A tar shard by its name."""
    return str(path).lower().endswith(SHARD_SUFFIXES)


def resolve(reference: str | Path) -> ShardSet:
    """The shard set a reference names (a directory, a tar, a brace pattern, a ``::`` list, a ``pipe:``)."""
    text = str(reference)
    path = Path(text)
    if path.is_dir():
        return _directory(path)
    if "::" not in text and "{" not in text and not text.startswith("pipe:"):
        if path.is_file() and is_shard_file(path):
            return ShardSet(text, path.stem, {ANY_SPLIT: [text]}, path.parent)
        raise MMTLError(f"no dataset.json and no shards at {text}: expected a shard directory, a .tar file, a brace "
                        f"pattern (shards/{{00000..00099}}.tar) or a pipe: command (create shards with "
                        f"`mmtl data synth --out {text}` or `mmtl data convert`)")
    urls = list(wds.shardlists.expand_urls(text))
    check_pipes(urls, text)
    local = [u for u in urls if not is_pipe(u)]
    remote = [u for u in local if re.match(r"^[a-z][a-z0-9+.-]*://", u) and not u.startswith("file://")]
    if remote:
        raise MMTLError(f"{remote[0]}: mmtl reads local files and pipe: commands only (no network at run time)")
    missing = [u for u in local if not Path(u.removeprefix("file://")).is_file()]
    if missing:
        raise MMTLError(f"{len(missing)} of {len(urls)} shard(s) of {text} do not exist, e.g. {', '.join(missing[:3])}")
    homes = {Path(u.removeprefix("file://")).parent for u in local}
    home = homes.pop() if len(homes) == 1 and len(local) == len(urls) else None
    name = home.name if home else "shards"
    return ShardSet(text, name, {ANY_SPLIT: urls}, home)


def _directory(path: Path) -> ShardSet:
    files = sorted(p for p in path.iterdir() if p.is_file() and is_shard_file(p))
    if not files:
        raise MMTLError(f"{path} has neither a dataset.json nor .tar shards: not a shard directory "
                        f"(create one with `mmtl data synth --out {path}` or `mmtl data convert`)")
    splits: dict[str, list[str]] = {}
    for file in files:
        match = _SPLIT_FILE.match(file.name)
        split = match.group(1).lower() if match and match.group(1).lower() in SPLIT_NAMES else ANY_SPLIT
        splits.setdefault(split, []).append(str(file))
    return ShardSet(str(path), path.name, splits, path)


def shard_mapping(items: Any, option: str = "data.map") -> Mapping:
    """Parse ``data.map`` items, keeping to the fields a shard's members can feed.

    An item without ``=`` continues the previous one: a comma-split override (``data.map=captions=txt,json.alt``)
    arrives as two items.
    """
    joined: list[str] = []
    for item in items or ():
        if "=" not in str(item) and joined:
            joined[-1] += f",{item}"
        else:
            joined.append(str(item))
    mapping = parse_mapping(joined, option)
    contract = [field.name for field in annotation_fields()] if mapping else []
    files = [name for name in mapping if name not in contract]
    if files:  # a shard's members can be mapped onto the contract's annotation fields only
        raise MMTLError(f"{option}: {', '.join(files)} cannot be mapped for shards (the image is the sample's "
                        f"jpg/png/webp); mappable: {', '.join(contract)}")
    return mapping


# ---------------------------------------------------------------------------------------------
# raw sample -> sample contract


def _member_value(data: Any, name: str) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        return data
    text = bytes(data).decode("utf-8", errors="replace")
    if name.endswith("json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None
    return text.strip()


def _find(raw: dict[str, Any], meta: dict[str, Any], path: str) -> list[Any]:
    """Values at ``path``: from the member its head names (longest first), else inside the json."""
    for member in sorted((k for k in raw if not k.startswith("__")), key=len, reverse=True):
        if path == member:
            return [v for v in [_member_value(raw[member], member)] if v is not None]
        if path.startswith(member) and path[len(member)] in ".[":
            rest = path[len(member):].lstrip(".")
            value = _member_value(raw[member], member)
            return lookup({"_": value}, "_" + ("" if rest.startswith("[") else ".") + rest)
    return lookup(meta, path)


def to_contract(raw: dict[str, Any], mapping: Mapping) -> dict[str, Any]:
    """A raw sample whose ``json`` is rewritten into the sample contract (other members kept).

    A ``json`` member that is not a JSON object is left as it is, so the loader counts the sample
    as corrupt (``malformed_json``) exactly as for native shards.
    """
    meta: dict[str, Any] = {}
    if "json" in raw:
        meta = _member_value(raw["json"], "json")
        if not isinstance(meta, dict):
            return raw
    fields = annotation_fields()
    annotation = {f.name: f.kind.keep(meta[f.name]) for f in fields if f.name in meta and f.name not in mapping}
    for field in fields:  # members read as defaults when the mapping does not name the field
        name, member = field.name, field.default_member
        if member and name not in annotation and name not in mapping and member in raw:
            _set_field(annotation, name, [_member_value(raw[member], member)])
    for name, paths in mapping.items():
        _set_field(annotation, name, [v for p in paths for v in _find(raw, meta, p)])
    out = {k: v for k, v in raw.items() if k != "json"}
    out["json"] = json.dumps(annotation).encode("utf-8")
    return out


def _set_field(annotation: dict[str, Any], name: str, values: list[Any]) -> None:
    """Fill field ``name`` from the values found for it (a value its kind cannot hold is left out)."""
    try:
        value, _ = field_value(name, values)
    except MalformedValue:
        return
    if is_present(value):
        annotation[name] = value


def unreadable(url: str, error: BaseException | None) -> str:
    """``url: why`` for a shard that could not be read (the error boundary's wording for OS errors)."""
    if isinstance(error, OSError):
        return os_error_message(error) if error.filename else f"{url}: {os_error_message(error)}"
    return f"{url}: {error}" if error is not None else f"{url}: no readable samples"


def refuse_unreadable_shards(error: BaseException) -> bool:
    """webdataset handler for reading a split through: a shard file that cannot be opened is an error
    naming it; a damaged member inside a readable shard is warned about and skipped."""
    if isinstance(error, OSError) and error.filename:
        raise MMTLError(f"cannot read shard {os_error_message(error)}") from None
    return wds.warn_and_continue(error)


def contract_samples(urls: list[str], mapping: Mapping | None, handler: Any = wds.warn_and_continue
                     ) -> Iterator[dict[str, Any]]:
    """Raw samples of ``urls`` in order, turned into the contract when ``mapping`` is not None."""
    samples = wds.tarfile_to_samples(handler=handler)(dict(url=u) for u in opened(urls))
    return samples if mapping is None else (to_contract(s, mapping) for s in samples)


# ---------------------------------------------------------------------------------------------
# the scan: a dataset.json for a shard set that has none


def describe(reference: str | Path, mapping: Mapping) -> dict[str, Any]:
    """``dataset.json``-shaped info of a shard set: counts per split, classes, label mode (cached scan,
    see :mod:`data_pipelines.scancache`)."""
    shards = resolve(reference)
    key = _scan_key(shards, mapping)
    return _cached(scancache.cache_paths(shards.home, key), lambda path: scancache.read_cache(path, key, shards.splits),
                   lambda: _scan(shards, mapping), key)


def cached_texts(reference: str | Path, mapping: Mapping, split: str, limits: list[Any],
                 read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The texts of ``split``'s first annotations (``read()``, see :mod:`data_pipelines.profile`), cached
    beside the scan of the set: read once per shards, mapping, split and ``limits``."""
    shards = resolve(reference)
    key = hashlib.sha256(json.dumps([_scan_key(shards, mapping), "texts", split, limits]).encode()).hexdigest()
    paths = scancache.cache_paths(shards.home, key, scancache.TEXTS_PREFIX)
    return _cached(paths, lambda path: scancache.read_texts(path, key), read, key)


def _scan_key(shards: ShardSet, mapping: Mapping) -> str:
    return scancache.cache_key(shards.reference, _mapping_items(mapping), shards.splits, shards.home is None)


def _cached(paths: list[Path], read_one: Callable[[Path], dict[str, Any] | None],
            compute: Callable[[], dict[str, Any]], key: str) -> dict[str, Any]:
    """What the first valid cache file of ``paths`` holds, else ``compute()`` written (for ``key``) to the first
    writable one."""
    for path in paths:
        cached = read_one(path)
        if cached is not None:
            return cached
    value = compute()
    for path in paths:  # beside the shards when that folder is writable, else the user's cache folder
        if scancache.write_cache(path, key, value):
            break
    return value


def _scan(shards: ShardSet, mapping: Mapping) -> dict[str, Any]:
    total = sum(len(u) for u in shards.splits.values())
    print(f"mmtl: scanning {total} shard(s) of {shards.reference} once (no dataset.json); the counts are cached",
          file=sys.stderr)
    names_of_classes = class_fields()
    splits, classes, multi = {}, Counter(), False
    for split, urls in shards.splits.items():
        tasks, samples, corrupt = Counter(), 0, 0
        for raw in contract_samples(urls, mapping):
            try:
                annotation = parse_annotation(raw.get("json"))
            except CorruptSampleError:
                corrupt += 1
                continue
            samples += 1
            tasks.update(supervised_tasks(annotation))
            labels = class_names(annotation, names_of_classes)
            classes.update(labels)
            multi = multi or len(labels) > 1
        splits[split] = {"samples": samples, "shards": urls, "tasks": dict(tasks), "corrupt": corrupt}
    names = sorted(classes, key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c))
    return {"name": shards.name, "splits": splits, "classes": names, "label_mode": "multi" if multi or not names
            else "single", "written_by": {"scan": shards.reference, "map": _mapping_items(mapping)},
            "any_split": shards.any_split}


def _mapping_items(mapping: Mapping) -> list[str]:
    return [f"{name}={','.join(paths)}" for name, paths in sorted(mapping.items())]
