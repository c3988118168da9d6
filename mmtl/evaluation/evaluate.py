"""Held-out evaluation of every task on every source that feeds it, next to each task's trivial baseline.

A run on ``data.sources`` is evaluated on the held-out split of each source, for the tasks that
source feeds; each task is scored per source and *overall* (all its sources' samples pooled). A
run on ``data.path`` alone (or ``mmtl eval --data``) has one source, whose scores are the overall ones.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.mixing import Source, training_sources
from data_pipelines.shards import iter_annotations, read_dataset_info, split_entry
from mmtl.builder import Components
from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.precision import get_autocast

log = logging.getLogger(__name__)

BASELINE_FIT_LIMIT = 5000
OVERALL = "all sources"


@dataclass
class EvalResult:
    """Per-task metrics of the model and of the trivial baseline (overall and per source), plus examples."""

    split: str
    samples: int
    metrics: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]]
    primary: dict[str, str]
    examples: list[dict[str, Any]] = field(default_factory=list)
    # mean teacher-forced loss per task (per row that carries the task), when asked for
    losses: dict[str, float] = field(default_factory=dict)
    # per source: {"samples": n, "model": {task: metrics}, "baseline": {task: metrics}}
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_evaluated: dict[str, str] = field(default_factory=dict)  # source -> why it was left out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        out = {"split": self.split, "samples": self.samples, "primary_metric": self.primary,
               "model": self.metrics, "baseline": self.baselines, "sources": self.sources}
        if self.losses:
            out["loss"] = self.losses
        if self.not_evaluated:
            out["not_evaluated"] = self.not_evaluated
        return out


def evaluation_sources(config: ExperimentConfig, split: str, data_path: str | None = None
                       ) -> tuple[list[Source], list[Source], dict[str, str]]:
    """The held-out sources on ``split`` and the training source of each: ``data_path`` alone when given,
    else each of ``data.sources`` (with the tasks it feeds), else ``data.path``.

    A source without ``split`` is left out (third value: source -> reason); MMTLError when none has it.
    """
    if data_path:
        mapping = tuple(config.data.map)
        return [Source(data_path, split, mapping=mapping)], [Source(data_path, config.data.train_split, mapping=mapping)], {}
    trained = training_sources(config.data)
    held_out, fitted, missing = [], [], {}
    for source in trained:
        info = read_dataset_info(source.path, source.mapping)
        try:
            split_entry(info, split, source.path)
        except MMTLError:
            missing[source.path] = f"no split {split!r} (it has {', '.join(sorted(info.get('splits', {}))) or 'none'})"
            continue
        held_out.append(replace(source, split=split))
        fitted.append(source)
    if not held_out:
        raise MMTLError(f"no source of the run has a {split!r} split: "
                        + "; ".join(f"{path}: {why}" for path, why in missing.items()))
    for path, why in missing.items():
        log.warning("evaluation leaves out source %s: %s", path, why)
    return held_out, fitted, missing


@dataclass
class _Collected:
    """Predictions, references and annotations of one source, per task."""

    samples: int = 0
    predictions: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    references: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    annotations: dict[str, list] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs and what it adds to the metrics.

    ``trivial_baselines=False`` skips the trivial baselines (``baselines`` is then empty);
    ``losses=True`` also averages each task's teacher-forced loss over all sources;
    ``data_metrics=False`` skips the metrics that read the training split (Task.score_against_data, e.g.
    generated word fragments), which validation during training does not need.
    """

    precision: str = "fp32"
    trivial_baselines: bool = True
    losses: bool = False
    data_metrics: bool = True


@torch.no_grad()
def evaluate(components: Components, config: ExperimentConfig, device: torch.device,
             data_path: str | None = None, split: str | None = None, max_samples: int | None = None,
             options: EvalOptions = EvalOptions()) -> EvalResult:
    """Predict every task on ``split`` of every source that feeds it and score it (see the module docstring).

    Trivial baselines are fitted on each source's training split. ``max_samples`` (default
    ``config.eval.max_samples``; 0: all) caps the samples read *per source*; ``options``: precision,
    trivial baselines and teacher-forced losses (:class:`EvalOptions`).
    """
    precision, losses = options.precision, options.losses
    split = split or config.eval.split
    limit = config.eval.max_samples if max_samples is None else max_samples
    held_out, fitted, missing = evaluation_sources(config, split, data_path)
    loss_sums: dict[str, float] = defaultdict(float)
    loss_rows: dict[str, int] = defaultdict(int)
    components.model.eval()
    examples: list[dict[str, Any]] = []
    collected: dict[str, _Collected] = {}
    for source in held_out:
        collected[source.path] = _predict_source(components, config, device, source, precision, limit,
                                                 (loss_sums, loss_rows) if losses else None, examples)
    sources, metrics, baselines = _score_all(components, held_out, fitted, collected, options, config.eval.threshold)
    primary = {t.name: t.primary_metric for t in components.tasks if t.name in metrics}
    mean_losses = {t: loss_sums[t] / loss_rows[t] for t in loss_rows if loss_rows[t]}
    samples = sum(part.samples for part in collected.values())
    return EvalResult(split, samples, metrics, baselines, primary, examples, mean_losses, sources, missing)


def _score_all(components: Components, held_out: list[Source], fitted: list[Source], collected: dict[str, "_Collected"],
               options: EvalOptions, threshold: float) -> tuple[dict[str, Any], dict, dict]:
    """Per-source results, then the model's and the trivial baselines' metrics over all sources pooled."""
    reads_training = options.trivial_baselines or options.data_metrics
    training = {s.path: _training_annotations(f) if reads_training else [] for s, f in zip(held_out, fitted)}
    trivial = {s.path: _trivial_predictions(components, collected[s.path], training[s.path])
               for s in held_out} if options.trivial_baselines else {}
    data_metrics = options.data_metrics
    sources: dict[str, dict[str, Any]] = {}
    for source in held_out:
        part = collected[source.path]
        sources[source.path] = {"samples": part.samples, "model": _score(components, part, threshold,
                                                                         training[source.path], data_metrics),
                                "baseline": _score_trivial(components, part, trivial.get(source.path), threshold)}
    if len(held_out) == 1:  # one source: its scores are the overall ones (scored once)
        return sources, sources[held_out[0].path]["model"], sources[held_out[0].path]["baseline"]
    pooled = _pool(collected.values())
    pooled_trivial = {t: [p for path in trivial for p in trivial[path].get(t, [])] for t in pooled.references}
    pooled_training = [a for annotations in training.values() for a in annotations]
    return (sources, _score(components, pooled, threshold, pooled_training, data_metrics),
            _score_trivial(components, pooled, pooled_trivial if trivial else None, threshold))


def _predict_source(components: Components, config: ExperimentConfig, device: torch.device, source: Source,
                    precision: str, limit: int, loss_totals: tuple[dict, dict] | None,
                    examples: list[dict[str, Any]]) -> _Collected:
    """Run the model on one held-out source, for the tasks it feeds."""
    tasks = [t for t in components.tasks if source.tasks is None or t.name in source.tasks]
    names = [t.name for t in tasks]
    settings = LoaderSettings(image_size=config.model.image.image_size, context_length=config.model.text.context_length,
                              batch_size=config.eval.batch_size, train=False,
                              max_corrupt_fraction=config.data.max_corrupt_fraction,
                              max_image_pixels=config.data.max_image_pixels)
    loader = make_loader([source], source.split, tasks, components.vocab, settings)
    out = _Collected()
    threshold = config.eval.threshold
    # threshold 0: every class with its score, for ranking metrics (mAP); scoring and the printed
    # examples cut at config.eval.threshold
    ranked = replace(config.eval, threshold=0.0)
    for batch in loader:
        batch = batch.to(device)
        with get_autocast(precision, device):
            predicted = components.model.predict(batch, names, ranked)
            batch_losses = components.model(batch) if loss_totals is not None else {}
        for task, loss in batch_losses.items():
            rows = len(batch.targets[task]["index"])
            loss_totals[0][task] += float(loss) * rows
            loss_totals[1][task] += rows
        rows = len(batch) if not limit else min(len(batch), limit - out.samples)  # exactly `limit` samples
        for row, annotation in enumerate(batch.annotations[:rows]):
            example = {"key": batch.keys[row], "source": source.path, "predictions": {}, "references": {}}
            for task in tasks:
                reference = task.reference(annotation)
                if reference is None:
                    continue
                out.predictions[task.name].append(predicted[task.name][row])
                out.references[task.name].append(reference)
                out.annotations[task.name].append(annotation)
                example["predictions"][task.name] = task.format(task.thresholded(predicted[task.name][row], threshold))
                example["references"][task.name] = task.format_reference(reference)
            if len(examples) < config.eval.num_examples and example["predictions"]:
                examples.append(example)
        out.samples += rows
        if limit and out.samples >= limit:
            break
    return out


def _score(components: Components, part: _Collected, threshold: float, training: list[dict[str, Any]],
           data_metrics: bool = True) -> dict[str, dict[str, float]]:
    """Each task's metrics on ``part``; with ``data_metrics`` also those that read its annotations and the
    ``training`` ones (Task.score_against_data)."""
    scores = {}
    for task in [t for t in components.tasks if part.references.get(t.name)]:
        name = task.name
        scores[name] = task.score(part.predictions[name], part.references[name], threshold)
        if data_metrics:
            scores[name].update(task.score_against_data(part.predictions[name], part.annotations[name], training))
    return scores


def _training_annotations(train_source: Source) -> list[dict[str, Any]]:
    """Up to BASELINE_FIT_LIMIT annotations of ``train_source`` (what baselines are fitted on)."""
    return list(iter_annotations(train_source.path, train_source.split, BASELINE_FIT_LIMIT, train_source.mapping))


def _trivial_predictions(components: Components, part: _Collected, annotations: list[dict[str, Any]]) -> dict[str, list]:
    """Each task's trivial-baseline prediction of every collected sample, fitted on training ``annotations``."""
    out = {}
    for task in [t for t in components.tasks if part.references.get(t.name)]:
        baseline = task.fit_baseline(annotations)  # fitted once per task and source
        out[task.name] = [baseline(a) for a in part.annotations[task.name]]
    return out


def _score_trivial(components: Components, part: _Collected, predicted: dict[str, list] | None,
                   threshold: float) -> dict[str, dict[str, float]]:
    """The trivial baselines' ``predicted`` values scored against ``part``'s references ({} when None)."""
    if predicted is None:
        return {}
    return {t.name: t.score(predicted[t.name], part.references[t.name], threshold)
            for t in components.tasks if part.references.get(t.name)}


def _pool(parts: Any) -> _Collected:
    pooled = _Collected()
    for part in parts:
        pooled.samples += part.samples
        for store, other in ((pooled.predictions, part.predictions), (pooled.references, part.references),
                             (pooled.annotations, part.annotations)):
            for task, values in other.items():
                store[task] += values
    return pooled


def _metric_rows(task: str, source: str, model: dict[str, float], base: dict[str, float] | None,
                 primary: str) -> list[tuple[str, ...]]:
    """Table rows of one task on one source: its primary metric first, then the others."""
    rows = []
    for metric in [primary] + [m for m in model if m != primary]:
        value = model[metric]
        reference = None if base is None else base.get(metric)
        rows.append((task, source, metric + (" *" if metric == primary else ""), f"{value:.3f}",
                     "-" if reference is None else f"{reference:.3f}",
                     "-" if reference is None else f"{value - reference:+.3f}"))
    return rows


def format_table(result: EvalResult) -> str:
    """A plain-text table: task, source, every metric (primary marked *), model, trivial baseline, difference.

    With several sources each task has one block per source that feeds it, then the pooled one.
    """
    rows = [("task", "source", "metric", "model", "baseline", "delta")]
    several = len(result.sources) > 1
    for task, metric in result.primary.items():
        if several:
            for source, part in result.sources.items():
                if task in part["model"]:
                    rows += _metric_rows(task, source, part["model"][task], part["baseline"].get(task), metric)
        rows += _metric_rows(task, OVERALL if several else next(iter(result.sources), ""), result.metrics[task],
                             result.baselines.get(task), metric)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("* primary metric (decides the per-task verdict)")
    for source, why in result.not_evaluated.items():
        lines.append(f"not evaluated: {source} ({why})")
    return "\n".join(lines)


def format_examples(result: EvalResult) -> str:
    """Predictions next to references for the examples kept during evaluation."""
    blocks = []
    for example in result.examples:
        lines = [f"[{example['key']}]"]
        for task, prediction in example["predictions"].items():
            lines.append(f"  {task:<14} predicted: {prediction}")
            lines.append(f"  {'':<14} reference: {example['references'][task]}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
