"""Builds tasks, vocabulary and model from a config plus either a data set or a checkpoint's metadata."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_pipelines.mixing import training_sources
from data_pipelines.sample import annotation_texts
from data_pipelines.shards import iter_annotations, read_dataset_info
from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.models.model import MultiTaskModel
from mmtl.registry import TASKS
from mmtl.tasks.base import Task, TaskContext
from mmtl.text import Vocabulary

VOCAB_SCAN_LIMIT = 50_000
LABEL_MODES = ("multi", "single")  # dataset.json "label_mode": several labels per sample, or exactly one
from mmtl import __version__


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


def build_components(config: ExperimentConfig, classes: list[str], vocab: Vocabulary,
                     label_mode: str = "multi") -> Components:
    """Tasks and model for known classes, vocabulary and label mode ("multi" or "single")."""
    import mmtl.components  # noqa: F401

    if label_mode not in LABEL_MODES:
        raise MMTLError(f"label_mode must be one of {', '.join(LABEL_MODES)}; got {label_mode!r}")
    context = TaskContext(classes=classes, vocab=vocab, model=config.model, label_mode=label_mode)
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
    return build_components(config, classes, build_vocabulary(config), str(info.get("label_mode", "multi")))


def components_from_meta(config: ExperimentConfig, meta: dict[str, Any]) -> Components:
    """Components for a saved checkpoint (no data needed)."""
    return build_components(config, list(meta["classes"]), Vocabulary.from_dict(meta["vocab"]),
                            str(meta.get("label_mode", "multi")))
