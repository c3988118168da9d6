"""The data profile: what building a model needs to know of its training data, each source read once.

Per source: its ``dataset.json`` (or the cached scan of a shard set without one: classes, label mode,
counts per split and task), read once. Over every source, in one pass over the first annotations of
its training split: the distinct words of the texts (the compact vocabulary) and the BPE lengths of
the documents (the long-document warning). The pass runs the first time :attr:`DataProfile.texts` is
read, so a config refused for its classes is refused before any annotation is read; for a shard set
without ``dataset.json`` its result is cached beside the set's scan (:func:`shardsets.cached_texts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from data_pipelines import shardsets
from data_pipelines.mixing import Source
from data_pipelines.sample import TEXT_INPUT_FIELD, annotation_texts, text_fields
from data_pipelines.shards import as_mapping, is_native, iter_annotations, read_dataset_info, split_entry
from mmtl.errors import MMTLError
from mmtl.text import bpe_encode

VOCAB_SCAN_LIMIT = 50_000  # training annotations per source whose words make up the compact vocabulary
LONG_DOCUMENT_SCAN = 300  # training annotations per source whose documents are measured against the text context
# shares of all documents for which the long-document advice and ``mmtl data inspect`` name the context that keeps
# them whole
KEEP_WHOLE_SHARES = (0.5, 0.9, 1.0)


def context_keeping(lengths: Sequence[int], share: float) -> int:
    """The shortest text context (in BPE tokens) that reads at least ``share`` of ALL ``lengths`` whole; 0 when
    there are none."""
    if not lengths:
        return 0
    needed = max(1, math.ceil(share * len(lengths) - 1e-9))
    return sorted(lengths)[needed - 1]


def whole_share(lengths: Sequence[int], context: int) -> float:
    """The share of ``lengths`` (documents' BPE lengths) that a context of ``context`` tokens reads whole."""
    return sum(n <= context for n in lengths) / len(lengths) if lengths else 1.0


@dataclass(frozen=True)
class SourceProfile:
    """One training source and its ``dataset.json`` (or cached scan)."""

    source: Source
    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        """The data set's class list (empty when it has none)."""
        return list(self.info.get("classes", []))

    @property
    def label_mode(self) -> str:
        """``multi`` (any number of labels per sample) or ``single``."""
        return str(self.info.get("label_mode", "multi"))

    def feeds(self, tasks: Sequence[str]) -> bool:
        """Whether the source feeds one of ``tasks``: listed for it and annotated for it in its training split
        (assumed when its ``dataset.json`` has no counts for that split)."""
        source = self.source
        if source.tasks is not None and not set(source.tasks) & set(tasks):
            return False
        try:
            split = split_entry(self.info, source.split, source.path)
        except MMTLError:  # the loader names the missing split
            return True
        if "tasks" not in split:
            return True
        return any(split["tasks"].get(task, 0) for task in tasks)


@dataclass
class TextProfile:
    """The texts of the first annotations of every source's training split."""

    words: set[str] = field(default_factory=set)  # distinct words of the first VOCAB_SCAN_LIMIT annotations
    document_tokens: list[int] = field(default_factory=list)  # BPE lengths of those of the first LONG_DOCUMENT_SCAN

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain JSON values (what the scan cache holds)."""
        return {"words": sorted(self.words), "document_tokens": list(self.document_tokens)}

    def merge(self, other: "TextProfile | dict[str, Any]") -> None:
        """Add the texts of another source (after this one's)."""
        other = other if isinstance(other, TextProfile) else TextProfile(set(other["words"]), other["document_tokens"])
        self.words.update(other.words)
        self.document_tokens.extend(other.document_tokens)

    def add(self, index: int, annotation: dict[str, Any], text_limit: int, document_limit: int) -> None:
        """Count the ``index``-th annotation of a source."""
        if index < text_limit:
            for text in annotation_texts(annotation):
                self.words.update(text.split())
        if index < document_limit and annotation.get(TEXT_INPUT_FIELD):
            self.document_tokens.append(len(bpe_encode(str(annotation[TEXT_INPUT_FIELD]))))


@dataclass
class DataProfile:
    """Every training source's ``dataset.json`` and, read on first use, the texts of their annotations."""

    sources: list[SourceProfile]
    text_limit: int = VOCAB_SCAN_LIMIT
    document_limit: int = LONG_DOCUMENT_SCAN
    _texts: TextProfile | None = None

    @property
    def texts(self) -> TextProfile:
        """Words and document lengths, from one pass over each source's first annotations."""
        if self._texts is None:
            texts = TextProfile()
            for profile in self.sources:
                texts.merge(self._source_texts(profile.source))
            self._texts = texts
        return self._texts

    def _source_texts(self, source: Source) -> TextProfile | dict[str, Any]:
        """One source's texts; those of a shard set without ``dataset.json`` are cached beside its scan."""
        if is_native(source.path):
            return self._read_texts(source)
        limits = [self.text_limit, self.document_limit, *text_fields()]
        return shardsets.cached_texts(source.path, as_mapping(source.mapping), source.split, limits,
                                      lambda: self._read_texts(source).to_dict())

    def _read_texts(self, source: Source) -> TextProfile:
        """One pass over the first annotations of ``source``."""
        texts = TextProfile()
        limit = max(self.text_limit, self.document_limit)
        for index, annotation in enumerate(iter_annotations(source.path, source.split, limit, source.mapping)):
            texts.add(index, annotation, self.text_limit, self.document_limit)
        return texts


def profile_data(sources: Sequence[Source], text_limit: int = VOCAB_SCAN_LIMIT,
                 document_limit: int = LONG_DOCUMENT_SCAN) -> DataProfile:
    """The profile of ``sources``: each one's ``dataset.json`` read now, its annotations on first use."""
    return DataProfile([SourceProfile(s, read_dataset_info(s.path, s.mapping)) for s in sources],
                       text_limit, document_limit)
