"""The registry of ``mmtl data convert --format`` readers and the options they declare.

A format is one module: its reader and a :class:`~data_pipelines.convert.records.SourceFormat` (options,
reader, default label mode, data set name) registered here under its ``--format`` name; importing the
module registers it (the built-in ones are imported by :mod:`data_pipelines.convert`). The command line
reads :func:`source_options` to offer every option as a flag, so nothing here (or in a format module)
may import torch. :func:`data_pipelines.convert.write.convert_source` runs one.
"""
from __future__ import annotations

from data_pipelines.convert.records import SourceFormat, SourceOption
from mmtl.registry import Registry

FORMATS: Registry[SourceFormat] = Registry("data format")


def format_names() -> list[str]:
    """The registered formats in the order they were registered."""
    return [name for name, _ in FORMATS.items()]


def source_options() -> list[SourceOption]:
    """Every reader option of every format, once each (for the command line)."""
    seen: dict[str, SourceOption] = {}
    for _, spec in FORMATS.items():
        for option in spec.options:
            seen.setdefault(option.name, option)
    return list(seen.values())
