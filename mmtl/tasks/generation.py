"""Shared machinery of text-generation tasks: one decoder head, teacher-forced loss, decoding
(greedy, beam search or sampling, as ``options.generation`` says; see mmtl.models.generation)."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmtl.config import GenerationConfig, ModelConfig
from mmtl.config.fields import Range, setting
from mmtl.tasks.metrics import bleu, diversity, rouge, top_opening
from mmtl.models.fusion import Fused
from mmtl.models.generation import copy_from
from mmtl.models.heads import DecoderOptions, PromptedDecoder, TextDecoder
from mmtl.models.words import WordTable
from mmtl.tasks.base import Task
from mmtl.text import PAD, count_fragment_outputs, known_words


@dataclass
class GenerationSettings:
    """``task_settings.<task>`` of a task whose decoder writes text: how the decoder learns."""

    # share of each target token's probability spread over the whole vocabulary in the loss (Szegedy et
    # al. 2016); 0 is plain cross-entropy. Against memorising a small training set (issue #28).
    label_smoothing: float = setting(0.0, range=Range(0, 1, high_open=True))
    # the decoding's repetition penalty for this task where ``eval.generation.repetition_penalty`` is unset
    repetition_penalty: float = setting(1.0, range=Range(0, 100, low_open=True))


class GenerationTask(Task):
    """A task whose target is one of the strings in annotation field ``reference_field``."""

    writes_text = True
    lower_is_better = ("repetition", "top_opening", "fragment_outputs")
    diagnostic_metrics = ("distinct2", "repetition", "unique_outputs", "top_opening", "fragment_outputs")
    collapse_metrics = ("distinct2", "unique_outputs")
    Settings = GenerationSettings

    def reference(self, annotation: dict[str, Any]) -> list[str] | None:
        refs = annotation.get(self.reference_field.name)
        if isinstance(refs, str):
            refs = [refs]
        return [str(r) for r in refs] if refs else None

    def target(self, annotation: dict[str, Any], rng: random.Random) -> list[int] | None:
        refs = self.reference(annotation)
        if not refs:
            return None
        length = self.context.model.decoder.max_length
        return self.context.vocab.encode(rng.choice(refs), length, bos=True, eos=True)

    def collate(self, targets: list[list[int]]) -> dict[str, torch.Tensor]:
        tokens = torch.full((len(targets), max(map(len, targets))), PAD, dtype=torch.long)
        for row, ids in enumerate(targets):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"tokens": tokens}

    def build_head(self, config: ModelConfig) -> nn.Module:
        # a decoder copies only where its input can hold tokens (a decoder shared by several tasks: always),
        # so that no head carries parameters that never get a gradient
        copy = config.decoder.copy and (config.decoder.shared or self.reads_tokens())
        return TextDecoder(self.context.vocab.size, config.width, config.decoder.depth, config.num_heads,
                           config.decoder.max_length,
                           DecoderOptions(config.mlp_ratio, config.dropout, copy, config.decoder.tie_embeddings))

    def shared_head_key(self, config: ModelConfig) -> str | None:
        """With ``model.decoder.shared`` all generation tasks share one text decoder."""
        return "text_decoder" if config.decoder.shared else None

    def wrap_shared_head(self, shared: nn.Module) -> nn.Module:
        """The shared decoder plus this task's learned prompt."""
        return PromptedDecoder(shared)

    def loss_count(self, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target tokens (the loss is a mean over them, PAD excluded)."""
        return (target["tokens"][:, 1:] != PAD).sum()

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = target["tokens"]
        logits = head(tokens[:, :-1], fused.tokens, fused.valid, **copy_from(fused.ids)).float()
        # a copying decoder's log-probabilities are their own log-softmax, so smoothing reads them unchanged
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD,
                               label_smoothing=self.settings.label_smoothing)

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, options: Any) -> list[str]:
        generation = self.decoding(getattr(options, "generation", None))
        ids = head.generate(fused.tokens, fused.valid, config=generation, words=self.word_table(),
                            document_ids=fused.document_ids, **copy_from(fused.ids)).cpu().tolist()
        return [self.context.vocab.decode(row) for row in ids]

    def decoding(self, generation: GenerationConfig | None) -> GenerationConfig:
        """The run's decoding options with what it leaves unset taken from this task's settings."""
        generation = generation or GenerationConfig()
        if generation.repetition_penalty is None:
            generation = dataclasses.replace(generation, repetition_penalty=self.settings.repetition_penalty)
        return generation

    def word_table(self) -> WordTable:
        """Which vocabulary tokens end or begin a word, for whole-word decoding (built once)."""
        if getattr(self, "_word_table", None) is None:
            self._word_table = WordTable.of(self.context.vocab)
        return self._word_table

    def format_reference(self, reference: Sequence[str]) -> str:
        return reference[0]

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]],
              threshold: float = 0.5) -> dict[str, float]:
        """BLEU-4, ROUGE-1/2/L, and how degenerate the outputs are: distinct-2, repetition and unique outputs
        (metrics.diversity) and the share of the most common 4-word opening (metrics.top_opening)."""
        return {**bleu(predictions, references), **rouge(predictions, references), **diversity(predictions),
                **top_opening(predictions)}

    def input_text(self, annotation: dict[str, Any]) -> str:
        """The text of the annotation's input fields (a document to summarize; '' for a task without one)."""
        parts: list[str] = []
        for field in self.input_fields:
            value = annotation.get(field.name)
            parts += [str(v) for v in value] if isinstance(value, list) else [str(value or "")]
        return " ".join(parts)

    def score_against_data(self, predictions: Sequence[str], annotations: Sequence[dict[str, Any]],
                           training: Sequence[dict[str, Any]]) -> dict[str, float]:
        """``fragment_outputs``: the share (percent) of outputs holding a word that is neither a whole word
        of its own input text nor a word of the ``training`` annotations' references and inputs
        (mmtl.text.copied_fragments): a sub-word piece pasted out of a document, or a made-up word."""
        if not predictions:
            return {"fragment_outputs": 0.0}
        vocabulary = known_words(text for a in training for text in [*(self.reference(a) or []), self.input_text(a)])
        documents = [self.input_text(a) for a in annotations]
        return {"fragment_outputs": 100.0 * count_fragment_outputs(predictions, documents, vocabulary) / len(predictions)}

