"""The sample contract shared by converters, the loader and the tasks (see docs/architecture.md).

A webdataset sample is ``__key__`` + optional image bytes (``jpg``/``png``/``webp``) + ``json``
annotations, plus optional inputs of further modalities under their own keys (``depth.png``,
``wav``/``flac``; see ``mmtl.modalities``). Which tasks a sample supervises follows from which annotation
fields it has: each task declares them (``mmtl.tasks.base.Task.annotation_fields``, as
:class:`~data_pipelines.fields.AnnotationField` s), and this module reads them from the task registry, so
the registrations (``mmtl.components``) must be imported first. The further modalities a converter reads
from files come from the modality data registry in the same way.
"""
from __future__ import annotations

from typing import Any, Protocol

from data_pipelines.fields import DOCUMENT, SOURCE, AnnotationField
from mmtl.errors import MMTLError
from mmtl.registry import MODALITIES, TASKS

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# file suffixes read as images from a folder (image-folder conversion, batch prediction over a folder)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# The text input every task that reads text sees (a document, a question, any paired text).
TEXT_INPUT_FIELD = DOCUMENT.name
# the data layer's own annotation fields, after those of the tasks
DATA_FIELDS = (SOURCE,)


class TaskFields(Protocol):
    """What the data code reads of a registered task class (``mmtl.tasks.base.Task`` declares it)."""

    reference_field: AnnotationField
    writes_text: bool
    needs_classes: bool

    def annotation_fields(self) -> tuple[AnnotationField, ...]:
        """The annotation fields that must all be non-empty for a sample to supervise the task."""


def _registered_tasks() -> list[tuple[str, TaskFields]]:
    tasks = TASKS.items()
    if not tasks:
        raise MMTLError("no task is registered: import mmtl.components before reading annotations")
    return tasks


def task_fields() -> dict[str, tuple[str, ...]]:
    """Each registered task (in registration order) -> the annotation fields that must all be present and
    non-empty for a sample to supervise it."""
    return {key: tuple(f.name for f in task.annotation_fields()) for key, task in _registered_tasks()}


def annotation_fields() -> tuple[AnnotationField, ...]:
    """Every annotation field of the contract, once each: those the registered tasks read (in registration
    order), then the data layer's own. Two declarations of one name must agree on its kind."""
    declared = [(key, field) for key, task in _registered_tasks() for field in task.annotation_fields()]
    fields: dict[str, AnnotationField] = {}
    for reader, field in [*declared, *(("the data layer", field) for field in DATA_FIELDS)]:
        known = fields.setdefault(field.name, field)
        if known.kind is not field.kind:
            raise MMTLError(f"{reader} reads annotation field {field.name!r} as {field.kind.name}, "
                            f"but it is declared as {known.kind.name}")
    return tuple(fields.values())


def annotation_field(name: str) -> AnnotationField | None:
    """The declaration of annotation field ``name``; None for a name that is no annotation field."""
    return next((f for f in annotation_fields() if f.name == name), None)


def class_fields() -> tuple[str, ...]:
    """The annotation fields that hold class names (recognition's ``labels``): they make up the class list."""
    return tuple(field.name for field in annotation_fields() if field.kind.holds_classes)


def class_names(annotation: dict[str, Any], fields: tuple[str, ...] | None = None) -> list[str]:
    """The class names of a sample, as text (``fields``: :func:`class_fields`, passed when reading many)."""
    return [str(value) for name in (class_fields() if fields is None else fields)
            for value in annotation.get(name) or [] if value is not None]


def file_fields() -> tuple[str, ...]:
    """Modalities whose files a converter reads from a row (depth, audio): the registered modality data
    modalities that store a file themselves (``Modality.store`` overridden), by name."""
    return tuple(name for name, unit in MODALITIES.items()
                 if len([klass for klass in unit.__mro__ if "store" in vars(klass)]) > 1)


def class_tasks() -> list[str]:
    """Registered tasks that read the data set's class list (``Task.needs_classes``)."""
    return [key for key, task in _registered_tasks() if task.needs_classes]


def text_fields() -> tuple[str, ...]:
    """Annotation fields holding free text, whose words make up a compact vocabulary: the references of the
    tasks that write text, then the text input."""
    return (*(task.reference_field.name for _, task in _registered_tasks() if task.writes_text), TEXT_INPUT_FIELD)


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
