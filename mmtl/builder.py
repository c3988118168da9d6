"""Builds tasks, vocabulary and model from a config plus either a data set or a checkpoint's metadata."""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Any

from data_pipelines.mixing import training_sources
from data_pipelines.sample import TEXT_INPUT_FIELD, annotation_texts
from data_pipelines.shards import iter_annotations, read_dataset_info
from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.models.model import MultiTaskModel
from mmtl.registry import TASKS
from mmtl.tasks.base import Task, TaskContext
from mmtl.text import Vocabulary, bpe_encode

VOCAB_SCAN_LIMIT = 50_000
LONG_DOCUMENT_SCAN = 300  # training documents measured against the text context at the start of a run
LABEL_MODES = ("multi", "single")  # dataset.json "label_mode": several labels per sample, or exactly one
from mmtl import __version__

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything derived from config + data that a model needs, and the model itself."""

    tasks: list[Task]
    vocab: Vocabulary
    classes: list[str]
    model: MultiTaskModel
    label_mode: str = "multi"

    def meta(self, step: int) -> dict[str, Any]:
        """What a checkpoint must store to rebuild these components without the data."""
        return {
            "mmtl_version": __version__, "step": step, "tasks": [t.name for t in self.tasks],
            "classes": self.classes, "label_mode": self.label_mode, "vocab": self.vocab.to_dict(),
            "parameters": self.model.parameter_report(),
        }


def build_vocabulary(config: ExperimentConfig) -> Vocabulary:
    """Full BPE table, or the compact one of BPE ids seen in (up to 50k samples of) the training split."""
    if config.model.text.vocab == "full":
        return Vocabulary(None)
    texts = (t for source in training_sources(config.data)
             for a in iter_annotations(source.path, source.split, VOCAB_SCAN_LIMIT, source.mapping)
             for t in annotation_texts(a))
    return Vocabulary.from_texts(texts)


def long_document_report(config: ExperimentConfig, limit: int = LONG_DOCUMENT_SCAN) -> str | None:
    """A warning when training documents are longer than ``model.text.context_length`` BPE tokens, else None.

    Measures the documents of the first ``limit`` training annotations of each source (the text
    encoder reads only the first ``context_length`` tokens of a document; the rest is cut).
    """
    context = config.model.text.context_length
    lengths = [len(bpe_encode(str(a[TEXT_INPUT_FIELD]))) for source in training_sources(config.data)
               for a in iter_annotations(source.path, source.split, limit, source.mapping)
               if a.get(TEXT_INPUT_FIELD)]
    cut = sorted(n for n in lengths if n > context)
    if not cut:
        return None
    return (f"{len(cut)} of {len(lengths)} training documents scanned are longer than model.text.context_length="
            f"{context} BPE tokens and will be cut (median length {statistics.median(lengths):.0f}, longest {cut[-1]}); "
            f"set model.text.context_length={cut[len(cut) // 2]} to keep half of them whole, or see the README "
            "(Long documents)")


def build_components(config: ExperimentConfig, classes: list[str], vocab: Vocabulary,
                     label_mode: str = "multi") -> Components:
    """Tasks and model for known classes, vocabulary and label mode ("multi" or "single")."""
    import mmtl.components  # noqa: F401

    if label_mode not in LABEL_MODES:
        raise MMTLError(f"label_mode must be one of {', '.join(LABEL_MODES)}; got {label_mode!r}")
    context = TaskContext(classes=classes, vocab=vocab, model=config.model, label_mode=label_mode,
                          task_settings=config.task_settings)
    tasks = [TASKS.get(name)(context) for name in config.tasks]
    return Components(tasks, vocab, classes, MultiTaskModel(config.model, tasks, vocab), label_mode)


def components_from_data(config: ExperimentConfig) -> Components:
    """Components for training on ``config.data.path`` (or ``data.sources``: their classes in order of appearance)."""
    first, *others = training_sources(config.data)
    info = read_dataset_info(first.path, first.mapping)
    classes = list(info.get("classes", []))
    for source in others:
        classes += [c for c in read_dataset_info(source.path, source.mapping).get("classes", []) if c not in classes]
    if "recognition" in config.tasks and not classes:
        raise MMTLError(f"{config.data.path}/dataset.json lists no classes, but the recognition task needs them")
    warning = long_document_report(config)
    if warning:
        log.warning(warning)
    return build_components(config, classes, build_vocabulary(config), str(info.get("label_mode", "multi")))


def components_from_meta(config: ExperimentConfig, meta: dict[str, Any]) -> Components:
    """Components for a saved checkpoint (no data needed)."""
    return build_components(config, list(meta["classes"]), Vocabulary.from_dict(meta["vocab"]),
                            str(meta.get("label_mode", "multi")))
