"""The COCO reader of ``mmtl data convert --format coco``: captions (+ instances) JSON -> records.

The annotation files are checked entry by entry: a missing key or a wrong type stops the
conversion with one line naming the file, the entry and what it should be. ``file_name`` must
stay inside ``--images`` (no ``../`` or absolute paths) unless ``--allow-outside-root``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.fields import clean_text
from data_pipelines.convert.formats import FORMATS
from data_pipelines.convert.records import (
    ALLOW_OUTSIDE_ROOT, KeyMaker, ReadReport, Record, SourceFormat, SourceOption, confined_path, read_text_file,
)
from data_pipelines.sample import supervised_tasks
from mmtl.errors import MMTLError

_ID = (int, str)
# entry list -> required key -> accepted types
_IMAGES = {"id": _ID, "file_name": (str,)}
_CAPTIONS = {"image_id": _ID, "caption": (str,)}
_INSTANCES = {"image_id": _ID, "category_id": _ID}
_CATEGORIES = {"id": _ID, "name": (str,)}


def _load(path: Path, what: str, report: ReadReport) -> dict[str, Any]:
    text, fallback = read_text_file(path, what)
    report.text_fallback += fallback
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MMTLError(f"{what} file {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise MMTLError(f"{what} file {path} is nested too deeply to be a COCO annotation file") from None
    if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
        raise MMTLError(f"{path} is not a COCO annotation file (needs 'images' and 'annotations')")
    return document


def _entries(document: dict[str, Any], key: str, path: Path, required: dict[str, tuple[type, ...]],
             optional: bool = False) -> list[dict[str, Any]]:
    """``document[key]``, checked to be a list of objects with the ``required`` keys and types."""
    if key not in document and optional:
        return []
    entries = document.get(key)
    if not isinstance(entries, list):
        raise MMTLError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise MMTLError(f"{path}: {key}[{i}] must be an object, got {type(entry).__name__}")
        for name, types in required.items():
            if name not in entry:
                raise MMTLError(f"{path}: {key}[{i}] has no '{name}'")
            value = entry[name]
            if not isinstance(value, types) or isinstance(value, bool):
                wanted = " or ".join("an integer" if t is int else "a string" for t in types)
                raise MMTLError(f"{path}: {key}[{i}].{name} must be {wanted}, got {type(value).__name__} {value!r:.40}")
    return entries


def _labels(document: dict[str, Any], path: Path) -> tuple[list[str], dict[Any, set[str]]]:
    """The category names in category-id order, and the set of category names of each image id."""
    listed = _entries(document, "categories", path, _CATEGORIES, optional=True)
    names = {c["id"]: c["name"] for c in sorted(listed, key=lambda c: str(c["id"]).zfill(12))}
    label_sets: dict[Any, set[str]] = {}
    for ann in _entries(document, "annotations", path, _INSTANCES):
        if ann["category_id"] in names:
            label_sets.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    return list(names.values()), label_sets


def read_coco(images: Path, captions: Path, instances: Path | None, report: ReadReport,
              allow_outside_root: bool = False) -> tuple[list[Record], list[str]]:
    """COCO captions (+ instances) JSON -> one record per image with its captions and category names.

    Images with neither captions nor categories are left out (``no_annotations``), and so are
    ``file_name`` s outside ``images`` (``path_outside_root``). Returns the records and the
    category names in category-id order.
    """
    if not images.is_dir():
        raise MMTLError(f"--images directory not found: {images}")
    caption_doc = _load(captions, "--captions", report)
    instance_doc = _load(instances, "--instances", report) if instances is not None else None
    image_files: dict[Any, str] = {}
    for path, doc in ((captions, caption_doc), (instances, instance_doc)):
        if doc is not None:
            image_files.update({image["id"]: image["file_name"] for image in _entries(doc, "images", path, _IMAGES)})
    caption_lists: dict[Any, list[str]] = {}
    for ann in _entries(caption_doc, "annotations", captions, _CAPTIONS):
        if text := clean_text(ann["caption"]):
            caption_lists.setdefault(ann["image_id"], []).append(text)
    categories, label_sets = _labels(instance_doc, instances) if instance_doc is not None else ([], {})
    keys = KeyMaker()
    records = []
    for image_id, file_name in sorted(image_files.items(), key=lambda item: str(item[0]).zfill(12)):
        annotation: dict[str, Any] = {"source": "coco", "image_id": image_id}
        if caption_lists.get(image_id):
            annotation["captions"] = caption_lists[image_id]
        if label_sets.get(image_id):
            annotation["labels"] = sorted(label_sets[image_id])
        if not supervised_tasks(annotation):
            report.skipped["no_annotations"] += 1
            continue
        image_path = confined_path(images, file_name, allow_outside_root)
        if image_path is None:
            report.skip_outside_root(images)
            continue
        records.append(Record(keys(Path(file_name).stem), annotation, image_path))
    return records, categories


def _read(inputs: dict[str, Any], report: ReadReport) -> tuple[list[Record], list[str]]:
    instances = Path(inputs["instances"]) if inputs.get("instances") else None
    return read_coco(Path(inputs["images"]), Path(inputs["captions"]), instances, report,
                     bool(inputs.get("allow_outside_root")))


COCO = FORMATS.register("coco")(SourceFormat(
    options=(
        SourceOption("images", "coco: directory of the image files", required=True),
        SourceOption("captions", "coco: captions_*.json", required=True),
        SourceOption("instances", "coco: instances_*.json (object categories -> recognition labels)"),
        ALLOW_OUTSIDE_ROOT,
    ),
    read=_read, label_mode="multi", dataset_name=lambda inputs: "coco",
))
