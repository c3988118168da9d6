"""Object recognition read from the fused tokens by per-class queries: multi-label tags (sigmoid per
class) or, when dataset.json says ``"label_mode": "single"``, one class per sample (softmax, top-1/top-5)."""
from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.fields import CLASS_NAMES, AnnotationField
from mmtl.config import ModelConfig
from mmtl.config.fields import Range, setting
from mmtl.errors import ConfigError
from mmtl.tasks.metrics import multilabel_average_precision, multilabel_scores
from mmtl.models.fusion import Fused
from mmtl.models.heads import CLASS_HEADS
from mmtl.registry import TASKS
from mmtl.tasks.base import Task

Tags = list[tuple[str, float]]
SINGLE_TOP_K = 5


def single_label_scores(ranked: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ranked class names against each sample's (first) label."""
    n = max(len(references), 1)
    top1 = sum(bool(r) and bool(p) and p[0] == r[0] for p, r in zip(ranked, references)) / n
    top5 = sum(bool(r) and r[0] in list(p)[:SINGLE_TOP_K] for p, r in zip(ranked, references)) / n
    return {"top1": top1, "top5": top5}


@dataclass
class RecognitionSettings:
    """``task_settings.recognition``: which head reads the fused tokens, and the loss's label smoothing."""

    # a CLASS_HEADS key: "queries" (one learned query per class attends to the tokens, Query2Label) or
    # "pooled" (average of the tokens, LayerNorm, linear: the plain recipe's head)
    head: str = setting("queries", help="class head: queries or pooled")
    # single-label only: cross-entropy against (1 - s) on the class + s spread over all classes
    label_smoothing: float = setting(0.0, range=Range(0, 1, high_open=True))

    def check(self, key: str) -> None:
        """The head must be a registered class head (run by ``mmtl.config.settings_of``)."""
        if self.head not in CLASS_HEADS:
            raise ConfigError(f"{key}.head: unknown class head {self.head!r}; valid: {', '.join(CLASS_HEADS.keys())}")


@TASKS.register("recognition")
class RecognitionTask(Task):
    """Recognition; the class list and label mode travel with the checkpoint."""

    name = "recognition"
    inputs = ("image",)
    required_inputs = ("image",)
    reference_field = AnnotationField("labels", CLASS_NAMES, default_member="cls")
    needs_classes = True
    Settings = RecognitionSettings

    @property
    def primary_metric(self) -> str:  # type: ignore[override]
        """Multi-label: micro F1 of the tags; single-label: top-1 accuracy."""
        return "top1" if self.single else "f1_micro"

    def _label_names(self, labels: Sequence[Any]) -> list[str]:
        classes = self.context.classes
        return [classes[label] if isinstance(label, int) else str(label) for label in labels]

    def _class_index(self) -> dict[str, int]:
        """Class name -> row, built once per class list (rebuilding it per sample cost ~5% of loading)."""
        cached = self.__dict__.get("_index_cache")
        if cached is None or cached[0] is not self.context.classes:
            cached = self._index_cache = (self.context.classes, {n: i for i, n in enumerate(self.context.classes)})
        return cached[1]

    @property
    def single(self) -> bool:
        """One class per sample (softmax) instead of any number (sigmoid)."""
        return self.context.label_mode == "single"

    def target(self, annotation: dict[str, Any], rng: random.Random) -> torch.Tensor | None:
        labels = annotation.get(self.reference_field.name)
        if not labels:
            return None
        index = self._class_index()
        if self.single:  # the first known label is the class
            known = [index[name] for name in self._label_names(labels) if name in index]
            return torch.tensor(known[0]) if known else None
        target = torch.zeros(len(index))
        for name in self._label_names(labels):
            if name in index:
                target[index[name]] = 1.0
        return target

    def collate(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"labels": torch.stack(targets)}

    def build_head(self, config: ModelConfig) -> nn.Module:
        return CLASS_HEADS.get(self.settings.head)(config.width, len(self.context.classes), config.num_heads)

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = head(fused.tokens, fused.valid).float()
        if self.single:
            return F.cross_entropy(logits, target["labels"], label_smoothing=self.settings.label_smoothing)
        # summed over classes, averaged over samples: a mean over classes too would shrink each
        # class's gradient by the number of classes and starve this task next to the others
        loss = F.binary_cross_entropy_with_logits(logits, target["labels"], reduction="sum")
        return loss / logits.shape[0]

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[Tags]:
        logits = head(fused.tokens, fused.valid).float()
        if self.single:  # the top 5 classes, most probable first
            top = logits.softmax(-1).cpu().topk(min(SINGLE_TOP_K, logits.shape[-1]), dim=-1)
            return [[(self.context.classes[i], round(float(p), 4)) for p, i in zip(ps.tolist(), ix.tolist())]
                    for ps, ix in zip(top.values, top.indices)]
        probs = torch.sigmoid(logits).cpu()
        threshold = getattr(options, "threshold", 0.5)
        out = []
        for row in probs:
            order = torch.argsort(row, descending=True)
            out.append([(self.context.classes[i], round(float(row[i]), 4)) for i in order.tolist() if row[i] >= threshold])
        return out

    def reference(self, annotation: dict[str, Any]) -> list[str] | None:
        labels = annotation.get(self.reference_field.name)
        return self._label_names(labels) if labels else None

    def score(self, predictions: Sequence[Any], references: Sequence[Sequence[str]],
              threshold: float = 0.5) -> dict[str, float]:
        """Single-label: top-1/top-5 accuracy. Multi-label: F1 and exact match of the tags at ``threshold``,
        and mAP over every class's score."""
        if self.single:
            names = [[p[0] if isinstance(p, (tuple, list)) else p for p in tags] for tags in predictions]
            return single_label_scores(names, references)
        scored = [[p if isinstance(p, (tuple, list)) else (p, 1.0) for p in tags] for tags in predictions]
        shown = [[name for name, value in self.thresholded(tags, threshold)] for tags in scored]
        return {**multilabel_scores(shown, references, self.context.classes),
                **multilabel_average_precision(scored, references, self.context.classes)}

    def thresholded(self, prediction: Tags, threshold: float) -> Tags:
        """Multi-label: the tags scoring at least ``threshold``; single-label: the ranking as it is."""
        return prediction if self.single else [(name, value) for name, value in prediction if value >= threshold]

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Tags]:
        """Majority tags: the k most frequent training tags, k = the median number of tags per sample
        (single-label: the most frequent classes, ranked)."""
        label_sets = [labels for labels in map(self.reference, train_annotations) if labels]
        if self.single:
            label_sets = [labels[:1] for labels in label_sets]
        counts = Counter(label for labels in label_sets for label in labels)
        k = max(1, round(statistics.median(len(s) for s in label_sets))) if label_sets else 1
        k = SINGLE_TOP_K if self.single else k
        majority = [(name, 1.0) for name, _ in counts.most_common(k)]
        return lambda annotation: majority

    def format_reference(self, reference: Sequence[str]) -> str:
        return ", ".join(reference)

    def format(self, prediction: Tags) -> str:
        return ", ".join(f"{name} ({score:.2f})" for name, score in prediction) or "(none)"
