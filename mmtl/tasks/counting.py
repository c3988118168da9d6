"""Counting: how many objects the input shows (annotation field ``count``), as classification over 0..MAX_COUNT."""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.fields import INTEGER, AnnotationField
from mmtl.config import ModelConfig
from mmtl.models.fusion import Fused
from mmtl.models.heads import ClassQueryHead
from mmtl.registry import TASKS
from mmtl.tasks.base import Task

MAX_COUNT = 9  # counts above this are read as MAX_COUNT


@TASKS.register("counting")
class CountingTask(Task):
    """One learned query per possible count reads the fused tokens; softmax over 0..MAX_COUNT."""

    name = "counting"
    inputs = ("image",)
    required_inputs = ("image",)
    primary_metric = "accuracy"
    lower_is_better = ("mae",)
    reference_field = AnnotationField("count", INTEGER)

    def reference(self, annotation: dict[str, Any]) -> int | None:
        count = annotation.get(self.reference_field.name)
        if count is None or isinstance(count, bool) or not isinstance(count, (int, float)) or count < 0:
            return None
        return min(int(count), MAX_COUNT)

    def target(self, annotation: dict[str, Any], rng: random.Random) -> torch.Tensor | None:
        count = self.reference(annotation)
        return None if count is None else torch.tensor(count)

    def collate(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"count": torch.stack(targets)}

    def build_head(self, config: ModelConfig) -> nn.Module:
        return ClassQueryHead(config.width, MAX_COUNT + 1, config.num_heads)

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(head(fused.tokens, fused.valid).float(), target["count"])

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[int]:
        return head(fused.tokens, fused.valid).argmax(-1).cpu().tolist()

    def score(self, predictions: Sequence[int], references: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
        n = max(len(references), 1)
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / n,
                "mae": sum(abs(p - r) for p, r in zip(predictions, references)) / n}

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], int]:
        """The most frequent training count, for every input."""
        counts = Counter(c for c in map(self.reference, train_annotations) if c is not None)
        majority = counts.most_common(1)[0][0] if counts else 0
        return lambda annotation: majority
