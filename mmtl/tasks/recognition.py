"""Object recognition: multi-label tags read from the fused tokens by per-class queries."""
from __future__ import annotations

import random
import statistics
from collections import Counter
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmtl.config import ModelConfig
from mmtl.evaluation.metrics import multilabel_scores
from mmtl.models.fusion import Fused
from mmtl.models.heads import ClassQueryHead
from mmtl.registry import TASKS
from mmtl.tasks.base import Task

Tags = list[tuple[str, float]]


@TASKS.register("recognition")
class RecognitionTask(Task):
    """Multi-label recognition (sigmoid per class); the class list travels with the checkpoint."""

    name = "recognition"
    inputs = ("image",)
    required_inputs = ("image",)
    primary_metric = "f1_micro"

    def _label_names(self, labels: Sequence[Any]) -> list[str]:
        classes = self.context.classes
        return [classes[label] if isinstance(label, int) else str(label) for label in labels]

    def target(self, annotation: dict[str, Any], rng: random.Random) -> torch.Tensor | None:
        labels = annotation.get("labels")
        if not labels:
            return None
        index = {name: i for i, name in enumerate(self.context.classes)}
        target = torch.zeros(len(index))
        for name in self._label_names(labels):
            if name in index:
                target[index[name]] = 1.0
        return target

    def collate(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"labels": torch.stack(targets)}

    def build_head(self, config: ModelConfig) -> nn.Module:
        return ClassQueryHead(config.width, len(self.context.classes), config.num_heads)

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = head(fused.tokens, fused.valid).float()
        # summed over classes, averaged over samples: a mean over classes too would shrink each
        # class's gradient by the number of classes and starve this task next to the others
        loss = F.binary_cross_entropy_with_logits(logits, target["labels"], reduction="sum")
        return loss / logits.shape[0]

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[Tags]:
        probs = torch.sigmoid(head(fused.tokens, fused.valid).float()).cpu()
        threshold = getattr(options, "threshold", 0.5)
        out = []
        for row in probs:
            order = torch.argsort(row, descending=True)
            out.append([(self.context.classes[i], round(float(row[i]), 4)) for i in order.tolist() if row[i] >= threshold])
        return out

    def reference(self, annotation: dict[str, Any]) -> list[str] | None:
        labels = annotation.get("labels")
        return self._label_names(labels) if labels else None

    def score(self, predictions: Sequence[Any], references: Sequence[Sequence[str]]) -> dict[str, float]:
        names = [[p[0] if isinstance(p, tuple) else p for p in tags] for tags in predictions]
        return multilabel_scores(names, references, self.context.classes)

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], Tags]:
        """Majority tags: the k most frequent training tags, k = the median number of tags per sample."""
        label_sets = [self._label_names(a["labels"]) for a in train_annotations if a.get("labels")]
        counts = Counter(label for labels in label_sets for label in labels)
        k = max(1, round(statistics.median(len(s) for s in label_sets))) if label_sets else 1
        majority = [(name, 1.0) for name, _ in counts.most_common(k)]
        return lambda annotation: majority

    def format_reference(self, reference: Sequence[str]) -> str:
        return ", ".join(reference)

    def format(self, prediction: Tags) -> str:
        return ", ".join(f"{name} ({score:.2f})" for name, score in prediction) or "(none)"
