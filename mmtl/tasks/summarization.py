"""Summarization: a short summary of the document, with the image available too."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from data_pipelines.sample import TEXT_INPUT_FIELD
from mmtl.registry import TASKS
from mmtl.tasks.generation import GenerationTask

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead_sentence(document: str) -> str:
    """The document's first sentence."""
    return _SENTENCE_END.split(document.strip(), maxsplit=1)[0] if document else ""


@TASKS.register("summarization")
class SummarizationTask(GenerationTask):
    """Generates a summary of the paired document (and image, when there is one)."""

    name = "summarization"
    inputs = ("image", "text")
    required_inputs = ("text",)
    primary_metric = "rougeL"
    reference_field = "summaries"

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
        """Lead sentence: the document's first sentence is its summary."""
        return lambda annotation: lead_sentence(annotation.get(TEXT_INPUT_FIELD) or "")
