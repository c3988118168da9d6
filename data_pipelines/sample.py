"""The sample contract shared by converters, the loader and the tasks (see docs/architecture.md).

A webdataset sample is ``__key__`` + optional image bytes (``jpg``/``png``/``webp``) + ``json``
annotations, plus optional inputs of further modalities under their own keys (``depth.png``,
``wav``/``flac``; see ``mmtl.modalities``). Which tasks a sample supervises follows from which annotation
fields it has: each task declares them (``mmtl.tasks.base.Task.annotation_fields``), and this module reads
them from the task registry, so the registrations (``mmtl.components``) must be imported first.
"""
from __future__ import annotations

from typing import Any, Protocol

from mmtl.errors import MMTLError
from mmtl.registry import TASKS

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

# The text input every task that reads text sees (a document, a question, any paired text).
TEXT_INPUT_FIELD = "document"


class TaskFields(Protocol):
    """What the data code reads of a registered task class (``mmtl.tasks.base.Task`` declares it)."""

    reference_field: str
    writes_text: bool
    needs_classes: bool

    def annotation_fields(self) -> tuple[str, ...]:
        """The annotation fields that must all be non-empty for a sample to supervise the task."""


def _registered_tasks() -> list[tuple[str, TaskFields]]:
    tasks = TASKS.items()
    if not tasks:
        raise MMTLError("no task is registered: import mmtl.components before reading annotations")
    return tasks


def task_fields() -> dict[str, tuple[str, ...]]:
    """Each registered task (in registration order) -> the annotation fields that must all be present and
    non-empty for a sample to supervise it."""
    return {key: task.annotation_fields() for key, task in _registered_tasks()}


def class_tasks() -> list[str]:
    """Registered tasks that read the data set's class list (``Task.needs_classes``)."""
    return [key for key, task in _registered_tasks() if task.needs_classes]


def text_fields() -> tuple[str, ...]:
    """Annotation fields holding free text, whose words make up a compact vocabulary: the references of the
    tasks that write text, then the text input."""
    return (*(task.reference_field for _, task in _registered_tasks() if task.writes_text), TEXT_INPUT_FIELD)


def supervised_tasks(annotation: dict[str, Any]) -> list[str]:
    """Names of the tasks whose fields are all present and non-empty in ``annotation``."""
    return [task for task, fields in task_fields().items() if all(annotation.get(f) for f in fields)]


def annotation_texts(annotation: dict[str, Any]) -> list[str]:
    """Every free-text string in ``annotation``."""
    texts: list[str] = []
    for name in text_fields():
        value = annotation.get(name)
        texts.extend([value] if isinstance(value, str) else [str(v) for v in value or []])
    return texts
