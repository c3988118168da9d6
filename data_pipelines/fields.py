"""Annotation fields as components declare them: a name and a kind that says how values are read.

A task declares the fields it reads as :class:`AnnotationField` s (``mmtl.tasks.base.Task``); the data
layer declares its own (``source``). Converters (``--map``, :mod:`data_pipelines.convert.tables`),
shards without a ``dataset.json`` (:mod:`data_pipelines.shardsets`) and ``mmtl data inspect`` read
these declarations through :func:`data_pipelines.sample.annotation_fields`, so a task that reads a new
field brings it to every one of them without a list to edit. Nothing here imports torch: the command
line reads it while building its parser.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class MalformedValue(ValueError):
    """A value that does not fit its field's kind (``count=three``); converters skip the row, scans drop it."""


def clean_text(value: Any) -> str:
    """Collapse whitespace (COCO captions carry newlines and trailing spaces)."""
    return " ".join(str(value).split())


def as_list(value: Any, split_cells: bool) -> tuple[list[str], int]:
    """A field value -> list of strings, and how many null entries were left out.

    ``split_cells``: CSV cells hold lists as ``a|b|c`` or as a JSON list.
    """
    if value is None:
        return [], 1
    if isinstance(value, list):
        items = [v for v in value if v is not None]
        return [clean_text(v) for v in items if clean_text(v)], len(value) - len(items)
    text = str(value).strip()
    if split_cells and text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return as_list(parsed, False)
    parts = text.split("|") if split_cells else [text]
    return [clean_text(p) for p in parts if clean_text(p)], 0


class FieldKind:
    """How the values of one kind of field are read. ``read`` turns the values found for a field in an
    input row (``--map`` paths, columns, members) into the field's value; ``keep`` tidies a value that is
    already in a contract ``json``."""

    name: str = "text"
    holds_classes: bool = False  # values are class names (they make up the data set's class list)

    def read(self, values: list[Any], split_cells: bool) -> tuple[Any, int]:
        """(the field's value, null entries left out) of the non-empty ``values`` found for it: one text."""
        parts = [" ".join(clean_text(x) for x in v if x is not None) if isinstance(v, list) else clean_text(v)
                 for v in values]
        return " ".join(p for p in parts if p), 0

    def keep(self, value: Any) -> Any:
        """A value found in a contract ``json`` as the contract holds it (by default: as it is)."""
        return value


class TextList(FieldKind):
    """A list of strings (captions, summaries): several values are concatenated."""

    name = "list of strings"

    def read(self, values: list[Any], split_cells: bool) -> tuple[Any, int]:
        items: list[str] = []
        nulls = 0
        for value in values:
            got, skipped = as_list(value, split_cells)
            items += got
            nulls += skipped
        return items, nulls


class ClassNames(TextList):
    """A list of class names or ids (recognition labels); ids are kept as their text."""

    name = "class names"
    holds_classes = True

    def keep(self, value: Any) -> Any:
        return [str(v) for v in value if v is not None] if isinstance(value, list) else value


class Integer(FieldKind):
    """One integer (the first value found); one that is not a number is a :class:`MalformedValue`."""

    name = "int"

    def read(self, values: list[Any], split_cells: bool) -> tuple[Any, int]:
        try:
            return int(values[0]), 0
        except (TypeError, ValueError):
            raise MalformedValue(f"{values[0]!r} is not an integer") from None


TEXT = FieldKind()
TEXTS = TextList()
CLASS_NAMES = ClassNames()
INTEGER = Integer()


@dataclass(frozen=True)
class AnnotationField:
    """One annotation field of the sample contract.

    ``words``: the ``mmtl data inspect`` statistic that counts the words of each of its texts (e.g.
    ``caption_words``); empty: not counted. ``default_member``: the webdataset member that feeds the field
    in shards without a ``dataset.json`` when no mapping names it (img2dataset's ``txt`` captions).
    """

    name: str
    kind: FieldKind = TEXT
    words: str = ""
    default_member: str = ""


def is_present(value: Any) -> bool:
    """Whether a read value fills its field (an empty text or list does not; the integer 0 does)."""
    return value is not None and value != "" and value != []


# the text input every task that reads text sees (a document, a question, any paired text)
DOCUMENT = AnnotationField("document", TEXT, words="document_words")
# the data set a sample came from: the data layer's own field, which no task reads
SOURCE = AnnotationField("source", TEXT)
