"""The image-folder reader of ``mmtl data convert --format imagefolder``: ``ROOT/<class>/<image>``
-> single-label recognition records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.convert.formats import FORMATS
from data_pipelines.convert.records import KeyMaker, ReadReport, Record, SourceFormat, SourceOption
from data_pipelines.sample import IMAGE_SUFFIXES
from mmtl.errors import MMTLError


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


def _read(inputs: dict[str, Any], report: ReadReport) -> tuple[list[Record], list[str]]:
    return read_imagefolder(Path(inputs["root"]), report)


IMAGEFOLDER = FORMATS.register("imagefolder")(SourceFormat(
    options=(SourceOption("root", "imagefolder: ROOT/<class>/<images> (single-label recognition)", required=True),),
    read=_read, label_mode="single", dataset_name=lambda inputs: Path(inputs["root"]).name,
))
