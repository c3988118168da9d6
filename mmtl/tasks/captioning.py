"""Image captioning: describe the image in a sentence."""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from data_pipelines.fields import TEXTS, AnnotationField
from mmtl.tasks.metrics import cider
from mmtl.registry import TASKS
from mmtl.tasks.generation import GenerationTask


@TASKS.register("captioning")
class CaptioningTask(GenerationTask):
    """Generates a caption from the image alone (the paired text would leak the answer)."""

    name = "captioning"
    inputs = ("image",)
    required_inputs = ("image",)
    primary_metric = "bleu4"
    reference_field = AnnotationField("captions", TEXTS, words="caption_words", default_member="txt")

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]],
              threshold: float = 0.5) -> dict[str, float]:
        """BLEU-4 and ROUGE (as every generation task), plus CIDEr-D, the captioning metric."""
        return {**super().score(predictions, references, threshold), **cider(predictions, references)}

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
        """Most frequent training caption, for every image."""
        counts = Counter(c for a in train_annotations for c in (self.reference(a) or []))
        caption = counts.most_common(1)[0][0] if counts else ""
        return lambda annotation: caption
