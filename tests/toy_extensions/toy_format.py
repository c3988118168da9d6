"""A toy ``mmtl data convert`` format: a text file of ``DOCUMENT<TAB>SUMMARY`` lines -> summarization records.

Importing this module registers it; its one option becomes the ``--pairs`` flag of ``mmtl data convert``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.convert.formats import FORMATS
from data_pipelines.convert.records import KeyMaker, ReadReport, Record, SourceFormat, SourceOption


def read_pairs(inputs: dict[str, Any], report: ReadReport) -> tuple[list[Record], None]:
    """One record per line holding a tab; other lines are counted as malformed."""
    keys = KeyMaker()
    records = []
    for number, line in enumerate(Path(inputs["pairs"]).read_text().splitlines()):
        document, tab, summary = line.partition("\t")
        if not tab or not document.strip() or not summary.strip():
            report.skipped["malformed_row"] += 1
            continue
        records.append(Record(keys(f"pair{number}"), {"document": document.strip(), "summaries": [summary.strip()]}))
    return records, None


PAIRS = FORMATS.register("pairs")(SourceFormat(
    options=(SourceOption("pairs", "pairs: a text file of DOCUMENT<TAB>SUMMARY lines", required=True, metavar="FILE"),),
    read=read_pairs, label_mode="multi", dataset_name=lambda inputs: Path(inputs["pairs"]).stem,
))
