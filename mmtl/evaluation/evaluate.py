"""Held-out evaluation of every task, next to each task's trivial baseline."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from data_pipelines.loader import make_loader
from data_pipelines.shards import iter_annotations
from mmtl.builder import Components
from mmtl.config import ExperimentConfig
from mmtl.training.precision import get_autocast

BASELINE_FIT_LIMIT = 5000
# metrics printed under a task's primary one when it reports them: how degenerate generated text is
SHOWN_BESIDE_PRIMARY = ("distinct2", "repetition")


@dataclass
class EvalResult:
    """Per-task metrics of the model and of the trivial baseline, plus a few examples."""

    split: str
    samples: int
    metrics: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]]
    primary: dict[str, str]
    examples: list[dict[str, Any]] = field(default_factory=list)
    # mean teacher-forced loss per task (per row that carries the task), when asked for
    losses: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"split": self.split, "samples": self.samples, "primary_metric": self.primary,
               "model": self.metrics, "baseline": self.baselines}
        if self.losses:
            out["loss"] = self.losses
        return out


@torch.no_grad()
def evaluate(components: Components, config: ExperimentConfig, device: torch.device,
             data_path: str | None = None, split: str | None = None, precision: str = "fp32",
             max_samples: int | None = None, trivial_baselines: bool = True, losses: bool = False) -> EvalResult:
    """Predict every task on ``split`` and score it; baselines are fitted on the training split.

    ``max_samples`` (default ``config.eval.max_samples``; 0: all) caps the samples read;
    ``trivial_baselines=False`` skips fitting and scoring the trivial baselines (``baselines`` is
    then empty); ``losses=True`` also averages each task's teacher-forced loss.
    """
    data_path = data_path or config.data.path
    split = split or config.eval.split
    limit = config.eval.max_samples if max_samples is None else max_samples
    loss_sums: dict[str, float] = defaultdict(float)
    loss_rows: dict[str, int] = defaultdict(int)
    model = components.model.eval()
    names = [t.name for t in components.tasks]
    loader = make_loader(
        data_path, split, tasks=components.tasks, vocab=components.vocab,
        image_size=config.model.image.image_size, context_length=config.model.text.context_length,
        batch_size=config.eval.batch_size, train=False,
        max_corrupt_fraction=config.data.max_corrupt_fraction, max_image_pixels=config.data.max_image_pixels,
        mapping=config.data.map,
    )
    predictions: dict[str, list] = defaultdict(list)
    references: dict[str, list] = defaultdict(list)
    annotations: dict[str, list] = defaultdict(list)
    examples, seen = [], 0
    threshold = config.eval.threshold
    ranked = replace(config.eval, threshold=0.0)
    for batch in loader:
        batch = batch.to(device)
        with get_autocast(precision, device):
            # threshold 0: every class with its score, for ranking metrics (mAP); scoring and the
            # printed examples cut at config.eval.threshold
            predicted = model.predict(batch, names, ranked)
            batch_losses = model(batch) if losses else {}
        for task, loss in batch_losses.items():
            rows = len(batch.targets[task]["index"])
            loss_sums[task] += float(loss) * rows
            loss_rows[task] += rows
        for row, annotation in enumerate(batch.annotations):
            example = {"key": batch.keys[row], "predictions": {}, "references": {}}
            for task in components.tasks:
                reference = task.reference(annotation)
                if reference is None:
                    continue
                predictions[task.name].append(predicted[task.name][row])
                references[task.name].append(reference)
                annotations[task.name].append(annotation)
                example["predictions"][task.name] = task.format(task.thresholded(predicted[task.name][row], threshold))
                example["references"][task.name] = task.format_reference(reference)
            if len(examples) < config.eval.num_examples:
                examples.append(example)
        seen += len(batch)
        if limit and seen >= limit:
            break
    train_annotations = list(iter_annotations(data_path, config.data.train_split, BASELINE_FIT_LIMIT, config.data.map)) \
        if trivial_baselines else []
    metrics, baselines = {}, {}
    for task in components.tasks:
        if not references[task.name]:
            continue
        metrics[task.name] = task.score(predictions[task.name], references[task.name], threshold)
        if not trivial_baselines:
            continue
        baseline = task.fit_baseline(train_annotations)
        baselines[task.name] = task.score([baseline(a) for a in annotations[task.name]], references[task.name],
                                          threshold)
    primary = {t.name: t.primary_metric for t in components.tasks if t.name in metrics}
    mean_losses = {t: loss_sums[t] / loss_rows[t] for t in loss_rows if loss_rows[t]}
    return EvalResult(split, seen, metrics, baselines, primary, examples, mean_losses)


def format_table(result: EvalResult) -> str:
    """A plain-text table: task, metric, model, trivial baseline, difference."""
    rows = [("task", "metric", "model", "baseline", "delta")]
    for task, primary in result.primary.items():
        for metric in [primary, *(m for m in SHOWN_BESIDE_PRIMARY if m in result.metrics[task])]:
            model, base = result.metrics[task][metric], result.baselines[task][metric]
            rows.append((task, metric, f"{model:.3f}", f"{base:.3f}", f"{model - base:+.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
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
