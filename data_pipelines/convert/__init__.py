"""Converters from common real-world layouts to mmtl shards (``mmtl data convert``).

Each format's reader (:mod:`.coco`, :mod:`.imagefolder`, :mod:`.tables` for JSONL/CSV/Parquet)
declares its options in a :class:`~data_pipelines.convert.records.SourceFormat`, registers it in
:data:`.formats.FORMATS` and turns its input into :class:`~data_pipelines.convert.records.Record` s (a key,
an optional image file, annotation fields of the sample contract), counting what it leaves out. Importing
this package registers the built-in formats without importing torch (the command line builds its flags
from them); :mod:`.write` is the one write path (``convert_source``): it prepares the files
(:mod:`.media`) in a process pool and writes one split.
"""
# isort: off  (registration order is the order `mmtl data convert --help` lists formats and options)
from data_pipelines.convert import coco  # noqa: F401
from data_pipelines.convert import imagefolder  # noqa: F401
from data_pipelines.convert import tables  # noqa: F401
# isort: on
from data_pipelines.convert.formats import FORMATS, format_names, source_options

__all__ = ["FORMATS", "format_names", "source_options"]
