"""Summarization: a short summary of the document, with the image available too.

Two modes (``task_settings.summarization.mode``): ``abstractive`` (default) writes the summary with
a text decoder; ``extractive`` scores the document's sentences and returns the best
``sentences`` of them in document order (mmtl.tasks.extractive), which learns from far less data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from data_pipelines.fields import DOCUMENT, TEXTS, AnnotationField
from data_pipelines.sample import TEXT_INPUT_FIELD
from mmtl.config import ModelConfig, choice
from mmtl.config.fields import Range, setting
from mmtl.errors import ConfigError, MMTLError
from mmtl.models.fusion import Fused
from mmtl.registry import TASKS
from mmtl.tasks.base import TaskContext
from mmtl.tasks.extractive import SentenceExtractor, documents_of, split_sentences
from mmtl.tasks.generation import GenerationSettings, GenerationTask


def lead_sentence(document: str) -> str:
    """The document's first sentence."""
    sentences = split_sentences(document)
    return sentences[0] if sentences else ""


@dataclass
class SummarizationSettings(GenerationSettings):
    """``task_settings.summarization``: how summaries are made (and, abstractive, how the decoder learns)."""

    # abstractive decoding's repetition penalty where eval.generation leaves it unset: 1.8 took SciTLDR's
    # repetition from 27-28% to 9-12% and ROUGE-L up 0.5-0.85 on 3 of 3 seeds (issue #28, docs/benchmarks.md)
    repetition_penalty: float = setting(1.8, range=Range(0, 100, low_open=True))
    # abstractive: a text decoder writes the summary; extractive: the best sentences of the document
    mode: str = choice("abstractive", "abstractive", "extractive")
    # extractive: how many sentences a summary has (fewer when the document has fewer)
    sentences: int = 1
    # extractive: sentences of a document that are scored (later ones are never selected)
    max_sentences: int = 64

    def check(self, key: str) -> None:
        """Ranges a single field's type cannot express (run by ``mmtl.config.settings_of``)."""
        if self.sentences < 1 or self.max_sentences < self.sentences:
            raise ConfigError(f"{key}: need 1 <= sentences <= max_sentences; got sentences={self.sentences}, "
                              f"max_sentences={self.max_sentences}")


@TASKS.register("summarization")
class SummarizationTask(GenerationTask):
    """Generates (abstractive) or selects (extractive) a summary of the paired document, with its image."""

    name = "summarization"
    inputs = ("image", "text")
    required_inputs = ("text",)
    primary_metric = "rougeL"
    reference_field = AnnotationField("summaries", TEXTS, words="summary_words")
    input_fields = (DOCUMENT,)
    Settings = SummarizationSettings

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        settings: SummarizationSettings = self.settings
        self.extractor = None if settings.mode == "abstractive" else SentenceExtractor(
            context.vocab, context.model.text.context_length, settings.sentences, settings.max_sentences)

    def target(self, annotation: dict[str, Any], rng: random.Random) -> Any | None:
        if self.extractor is None:
            return super().target(annotation, rng)
        return self.extractor.target(str(annotation.get(TEXT_INPUT_FIELD) or ""), self.reference(annotation))

    def collate(self, targets: list[Any]) -> dict[str, torch.Tensor]:
        return super().collate(targets) if self.extractor is None else self.extractor.collate(targets)

    def build_head(self, config: ModelConfig) -> nn.Module:
        if self.extractor is None:
            return super().build_head(config)
        return self.extractor.build_head(self.context.vocab.size, config)

    def shared_head_key(self, config: ModelConfig) -> str | None:
        """Extractive summarization has its own sentence scorer, never a shared decoder."""
        return super().shared_head_key(config) if self.extractor is None else None

    def loss_count(self, target: dict[str, torch.Tensor]) -> torch.Tensor | int:
        """Abstractive: target tokens; extractive: documents (the loss is a mean over them)."""
        return super().loss_count(target) if self.extractor is None else target["index"].numel()

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().loss(head, fused, target) if self.extractor is None else self.extractor.loss(head, fused, target)

    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[str]:
        """Abstractive decoding; the extractive mode needs each row's document (:meth:`predict_rows`)."""
        if self.extractor is not None:
            raise MMTLError("extractive summarization selects sentences of each row's document: use predict_rows")
        return super().predict(head, fused, options)

    def predict_rows(self, head: nn.Module, fused: Fused, options: Any,
                     annotations: Sequence[dict[str, Any]]) -> list[str]:
        """Abstractive: decode; extractive: select sentences of each row's document."""
        if self.extractor is None:
            return self.predict(head, fused, options)
        return self.extractor.predict(head, fused, documents_of(annotations, TEXT_INPUT_FIELD))

    def fit_baseline(self, train_annotations: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
        """Lead sentence: the document's first sentence is its summary."""
        return lambda annotation: lead_sentence(annotation.get(TEXT_INPUT_FIELD) or "")
