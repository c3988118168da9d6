"""A toy task that reads annotation fields no built-in component knows: ``stars``, an integer rating, of a
``review`` text (whose words ``mmtl data inspect`` counts).

Importing this module registers it; nothing else in the project names the field, so the tests that
import it show that converters, ``--map`` and shard scans learn of a new field from its task alone.
"""
from __future__ import annotations

import random
from typing import Any

import torch

from data_pipelines.fields import INTEGER, TEXT, AnnotationField
from mmtl.registry import TASKS
from mmtl.tasks.base import Task

STARS = AnnotationField("stars", INTEGER)
REVIEW = AnnotationField("review", TEXT, words="review_words")


@TASKS.register("rating")
class RatingTask(Task):
    """How many stars a picture earned (only its data side is complete: enough for the data tests)."""

    name = "rating"
    inputs = ("image",)
    required_inputs = ("image",)
    primary_metric = "accuracy"
    reference_field = STARS
    input_fields = (REVIEW,)

    def reference(self, annotation: dict[str, Any]) -> int | None:
        stars = annotation.get(STARS.name)
        return stars if isinstance(stars, int) and not isinstance(stars, bool) else None

    def target(self, annotation: dict[str, Any], rng: random.Random) -> torch.Tensor | None:
        stars = self.reference(annotation)
        return None if stars is None else torch.tensor(stars)
