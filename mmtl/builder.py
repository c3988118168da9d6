"""Builds tasks, vocabulary and model from a config plus either a data set or a checkpoint's metadata."""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

from data_pipelines.mixing import training_sources
from data_pipelines.profile import (KEEP_WHOLE_SHARES, VOCAB_SCAN_LIMIT, DataProfile, SourceProfile, context_keeping,
                                   profile_data, whole_share)
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import ExperimentConfig, check_budget
from mmtl.errors import MMTLError
from mmtl.models.model import MultiTaskModel
from mmtl.registry import TASKS
from mmtl.tasks.base import Task, TaskContext
from mmtl.text import Vocabulary
LABEL_MODES = ("multi", "single")  # dataset.json "label_mode": several labels per sample, or exactly one

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything derived from config + data that a model needs, and the model itself."""

    tasks: list[Task]
    vocab: Vocabulary
    classes: list[str]
    model: MultiTaskModel
    label_mode: str = "multi"
    class_sources: list[str] = field(default_factory=list)  # the data sets the classes were read from


def data_profile(config: ExperimentConfig) -> DataProfile:
    """The profile of the training sources of ``config`` (its texts are read only when it builds a compact
    vocabulary or measures documents)."""
    full = config.model.text.vocab == "full"
    return profile_data(training_sources(config.data), text_limit=0 if full else VOCAB_SCAN_LIMIT)


def build_vocabulary(config: ExperimentConfig, profile: DataProfile | None = None) -> Vocabulary:
    """Full BPE table, or the compact one of BPE ids seen in (up to 50k samples of) the training split."""
    if config.model.text.vocab == "full":
        return Vocabulary(None)
    return Vocabulary.from_texts(sorted((profile or data_profile(config)).texts.words))


def long_document_report(config: ExperimentConfig, profile: DataProfile | None = None) -> str | None:
    """A warning when training documents are longer than ``model.text.context_length`` BPE tokens, else None.

    Measures the documents of the first ``data_pipelines.profile.LONG_DOCUMENT_SCAN`` training annotations
    of each source (the text encoder reads only the first ``context_length`` tokens of a document; the rest
    is cut).
    """
    context = config.model.text.context_length
    lengths = (profile or data_profile(config)).texts.document_tokens
    cut = sorted(n for n in lengths if n > context)
    if not cut:
        return None
    # every share is a share of ALL documents scanned, so "keeps 90%" cannot be read as 90% of the cut ones
    suggestions: dict[int, float] = {}
    for share in KEEP_WHOLE_SHARES:
        length = context_keeping(lengths, share)
        if length > context:
            suggestions[length] = whole_share(lengths, length)
    first, *others = [f"{length} keeps {kept:.0%}" for length, kept in suggestions.items()]
    advice = f"model.text.context_length={first} of all documents whole" + "".join(f", {o}" for o in others)
    return (f"{len(cut)} of {len(lengths)} training documents scanned ({len(cut) / len(lengths):.0%}) are longer than "
            f"model.text.context_length={context} BPE tokens and will be cut; {whole_share(lengths, context):.0%} of "
            f"all documents are read whole (median length {statistics.median(lengths):.0f}, longest {cut[-1]}). "
            f"To read more whole: {advice}; see the README (Summarization modes and long documents)")


def build_components(config: ExperimentConfig, classes: list[str], vocab: Vocabulary,
                     label_mode: str = "multi", class_sources: list[str] | None = None,
                     training: bool = True) -> Components:
    """Tasks and model for known classes, vocabulary and label mode ("multi" or "single").

    The model's memory is estimated first (``training``: with gradients, optimiser state and kept
    activations) and refused, before anything is built, when over the budget (mmtl.config.budget)."""
    if label_mode not in LABEL_MODES:
        raise MMTLError(f"label_mode must be one of {', '.join(LABEL_MODES)}; got {label_mode!r}")
    check_budget(config, len(classes), vocab.size, training)
    context = TaskContext(classes=classes, vocab=vocab, model=config.model, label_mode=label_mode,
                          task_settings=config.task_settings)
    tasks = [TASKS.get(name)(context) for name in config.tasks]
    return Components(tasks, vocab, classes, MultiTaskModel(config.model, tasks, vocab), label_mode,
                      list(class_sources or []))


def class_tasks(config: ExperimentConfig) -> list[str]:
    """The tasks of ``config`` that read the data set's class list (``Task.needs_classes``)."""
    return [t for t in config.tasks if TASKS.get(t).needs_classes]


def label_mode_of(sources: list[SourceProfile], tasks: list[str]) -> str:
    """The one label mode of the sources that feed class labels to ``tasks``; MMTLError naming them when
    they disagree."""
    modes: dict[str, list[str]] = {}
    for profile in sources:
        modes.setdefault(profile.label_mode, []).append(profile.source.path)
    if len(modes) > 1:
        named = "; ".join(f"{mode}-label: {', '.join(paths)}" for mode, paths in sorted(modes.items()))
        fed = " and ".join(tasks) or "the labelled tasks"
        raise MMTLError(f"the sources feeding {fed} mix label modes ({named}); a model trains one label "
                        f"mode per task: restrict data.sources[i].tasks so that only sources of one mode feed "
                        f"{fed}, or convert them with the same --label-mode")
    return next(iter(modes), "multi")


def components_from_data(config: ExperimentConfig) -> Components:
    """Components for training on ``config.data.path`` or ``data.sources``.

    Classes (in order of appearance) and the label mode come from the sources that feed a labelled
    task (every source when no task reads labels); sources of different label modes feeding it are refused.
    Every source's ``dataset.json`` is read once, and its annotations once (:mod:`data_pipelines.profile`).
    """
    profile = data_profile(config)
    needing = class_tasks(config)
    sources = [p for p in profile.sources if p.feeds(needing)] if needing else []
    sources = sources or profile.sources
    classes: list[str] = []
    for source in sources:
        classes += [c for c in source.classes if c not in classes]
    if needing and not classes:
        raise MMTLError(f"{', '.join(s.source.path for s in sources)}: dataset.json lists no classes, but the "
                        f"{' and '.join(needing)} task needs them")
    paths = list(dict.fromkeys(s.source.path for s in sources))
    components = build_components(config, classes, build_vocabulary(config, profile), label_mode_of(sources, needing),
                                  paths)
    warning = long_document_report(config, profile) if any(t.reads_tokens() for t in components.tasks) else None
    if warning:
        log.warning(warning)
    return components


def components_from_meta(config: ExperimentConfig, meta: dict[str, Any]) -> Components:
    """Components for a saved checkpoint (no data needed)."""
    return build_components(config, list(meta["classes"]), Vocabulary.from_dict(meta["vocab"]),
                            str(meta["label_mode"]), list(meta["class_sources"]), training=False)
