"""The table of ``mmtl data convert --format`` readers, and :func:`convert_source`, which runs one."""
from __future__ import annotations

from typing import Any

from data_pipelines.convert.coco import COCO
from data_pipelines.convert.imagefolder import IMAGEFOLDER
from data_pipelines.convert.records import ReadReport, SourceFormat, SourceOption
from data_pipelines.convert.tables import TABLES
from data_pipelines.convert.write import ConvertOptions, ConvertResult, convert
from mmtl.errors import MMTLError

# format name -> its reader; a new format is one module with its SourceFormat, added here
FORMATS: dict[str, SourceFormat] = {"coco": COCO, "imagefolder": IMAGEFOLDER, **TABLES}


def source_options() -> list[SourceOption]:
    """Every reader option of every format, once each (for the command line)."""
    seen: dict[str, SourceOption] = {}
    for spec in FORMATS.values():
        for option in spec.options:
            seen.setdefault(option.name, option)
    return list(seen.values())


def convert_source(fmt: str, options: ConvertOptions, *, label_mode: str | None = None, name: str | None = None,
                   **source: Any) -> ConvertResult:
    """Read a source of format ``fmt`` and write it as one split (the ``mmtl data convert`` action).

    ``source``: the reader's inputs by option name (see each format's ``options``: ``images``,
    ``captions``, ``instances``, ``root``, ``input``, ``image_root``, ``mapping``, ``allow_outside_root``).
    """
    if fmt not in FORMATS:
        raise MMTLError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    missing = [option.command_flag for option in spec.options if option.required and not source.get(option.name)]
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
    reader_options = {"format": fmt, **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in source.items()
                                        if v not in (None, False, (), [])}}
    return convert(records, report, options, name=name or spec.dataset_name(source), classes=classes,
                   label_mode=mode, reader_options=reader_options)
