"""Converters from common real-world layouts to mmtl shards (``mmtl data convert``).

Each format's reader (:mod:`.coco`, :mod:`.imagefolder`, :mod:`.tables` for JSONL/CSV/Parquet)
declares its options in a :class:`~data_pipelines.convert.records.SourceFormat` and turns its input
into :class:`~data_pipelines.convert.records.Record` s (a key, an optional image file, annotation
fields of the sample contract), counting what it leaves out. :data:`.formats.FORMATS` is the table
of formats; :mod:`.write` is the one write path: it prepares the files (:mod:`.media`) in a
process pool and writes one split.
"""
from data_pipelines.convert.formats import FORMATS, convert_source, source_options
from data_pipelines.convert.write import ConvertOptions, ConvertResult

__all__ = ["FORMATS", "ConvertOptions", "ConvertResult", "convert_source", "source_options"]
