"""A toy task that reads annotation fields no built-in component knows: ``stars``, an integer rating, of a
``review`` text (whose words ``mmtl data inspect`` counts).

Importing this module registers it; nothing else in the project names the task or its fields, so the
tests that import it show that converters, ``--map``, shard scans, training and evaluation learn of a new
task and field from its one module.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.fields import INTEGER, TEXT, AnnotationField
from mmtl.config import ModelConfig
from mmtl.models.fusion import Fused
from mmtl.models.heads import ClassQueryHead
from mmtl.registry import TASKS
from mmtl.tasks.base import Task

STARS = AnnotationField("stars", INTEGER)
REVIEW = AnnotationField("review", TEXT, words="review_words")
MOST_STARS = 5


@TASKS.register("rating")
class RatingTask(Task):
    """How many stars (0..5) a picture earned: one learned query per rating reads the fused tokens."""

    name = "rating"
    inputs = ("image",)
    required_inputs = ("image",)
    primary_metric = "accuracy"
    reference_field = STARS
    input_fields = (REVIEW,)

    def reference(self, annotation: dict[str, Any]) -> int | None:
        stars = annotation.get(STARS.name)
        valid = isinstance(stars, int) and not isinstance(stars, bool) and 0 <= stars <= MOST_STARS
        return stars if valid else None

    def target(self, annotation: dict[str, Any], rng: random.Random) -> torch.Tensor | None:
        stars = self.reference(annotation)
        return None if stars is None else torch.tensor(stars)

    def collate(self, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"stars": torch.stack(targets)}

    def build_head(self, config: ModelConfig) -> nn.Module:
        return ClassQueryHead(config.width, MOST_STARS + 1, config.num_heads)

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(head(fused.tokens, fused.valid).float(), target["stars"])

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[int]:
        return head(fused.tokens, fused.valid).argmax(-1).cpu().tolist()

    def score(self, predictions: Sequence[int], references: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1)}

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], int]:
        """The most frequent training rating, for every input."""
        counts = Counter(s for s in map(self.reference, train_annotations) if s is not None)
        majority = counts.most_common(1)[0][0] if counts else 0
        return lambda annotation: majority
