"""Extractive summarization: split the document into sentences, score them, select the best in document order.

Training labels are oracle sentences: greedily, the sentence whose addition gives the selection the
highest ROUGE against the reference summaries (mean of ROUGE-1/2/L F-measure, the best reference
counting), up to the number of sentences a summary has. The loss is a cross-entropy of the
sentence scores against the oracle sentences (a softmax over the document's sentences).

The text encoder reads only ``model.text.context_length`` tokens. Sentences past it stay
selectable: the scorer judges them by their own tokens and index, flagged as beyond the context
(see :class:`mmtl.models.extractive.SentenceScorer`). Sentences past ``max_sentences`` are never
scored nor selected.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.tasks.metrics import rouge_f
from mmtl.models.extractive import SentenceScorer
from mmtl.models.fusion import Fused
from mmtl.text import PAD, Vocabulary

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SENTENCE_TOKENS = 48  # tokens of a sentence the scorer reads (its first ones)
_ALL_TOKENS = 1 << 30


def split_sentences(document: str) -> list[str]:
    """The document's sentences: split after ``.``, ``!`` or ``?`` followed by white space."""
    return [s for s in SENTENCE_END.split(document.strip()) if s] if document else []


def _rouge_mean(text: str, references: Sequence[str]) -> float:
    scores = rouge_f(text, references)
    return sum(scores.values()) / len(scores)


def oracle_sentences(sentences: Sequence[str], references: Sequence[str], count: int) -> list[int]:
    """Indices (ascending) of up to ``count`` sentences chosen greedily for the highest ROUGE to ``references``.

    Each round adds the sentence that maximises the mean ROUGE-1/2/L F-measure of the selection
    (joined in document order); after the first sentence, a round that gains nothing ends it.
    """
    chosen: list[int] = []
    best = 0.0
    for _ in range(min(count, len(sentences))):
        gains = [(_rouge_mean(" ".join(sentences[j] for j in sorted(chosen + [i])), references), -i)
                 for i in range(len(sentences)) if i not in chosen]
        score, negative = max(gains)
        if chosen and score <= best:
            break
        chosen.append(-negative)
        best = score
    return sorted(chosen)


class SentenceExtractor:
    """The extractive mode of summarization: targets, head, loss and selection over a document's sentences."""

    def __init__(self, vocab: Vocabulary, context_length: int, sentences: int, max_sentences: int) -> None:
        self.vocab = vocab
        self.context_length = context_length
        self.count = sentences
        self.max_sentences = max_sentences

    def sentences(self, document: str) -> list[str]:
        """The sentences the scorer sees (the first ``max_sentences``)."""
        return split_sentences(document)[: self.max_sentences]

    def encode(self, sentences: Sequence[str]) -> dict[str, list]:
        """Each sentence's first SENTENCE_TOKENS ids, and whether it starts past the text context.

        BPE never merges across white space, so a sentence's tokens and offset equal those of its
        span in the whole document's encoding, which is what the text encoder reads.
        """
        tokens, beyond, offset = [], [], 0
        for sentence in sentences:
            ids = self.vocab.encode(sentence, _ALL_TOKENS)
            tokens.append(ids[:SENTENCE_TOKENS] or [PAD])
            beyond.append(offset >= self.context_length)
            offset += len(ids)
        return {"tokens": tokens, "beyond": beyond}

    def target(self, document: str, references: Sequence[str] | None) -> dict[str, list] | None:
        """Sentences and oracle labels of one annotated document (None without a document or summary)."""
        sentences = self.sentences(document)
        if not sentences or not references:
            return None
        chosen = set(oracle_sentences(sentences, references, self.count))
        return {**self.encode(sentences), "labels": [float(i in chosen) for i in range(len(sentences))]}

    def collate(self, items: list[dict[str, list]]) -> dict[str, torch.Tensor]:
        """Pad to (rows, sentences, tokens): ``tokens``, ``beyond``, ``valid`` and, when given, ``labels``."""
        rows, most = len(items), max(max(len(i["tokens"]) for i in items), 1)
        longest = max((len(t) for i in items for t in i["tokens"]), default=1)
        tokens = torch.full((rows, most, longest), PAD, dtype=torch.long)
        beyond = torch.zeros(rows, most, dtype=torch.bool)
        valid = torch.zeros(rows, most, dtype=torch.bool)
        labels = torch.zeros(rows, most)
        for row, item in enumerate(items):
            for s, ids in enumerate(item["tokens"]):
                tokens[row, s, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            count = len(item["tokens"])
            beyond[row, :count] = torch.tensor(item["beyond"], dtype=torch.bool)
            valid[row, :count] = True
            if "labels" in item:
                labels[row, :count] = torch.tensor(item["labels"])
        return {"tokens": tokens, "beyond": beyond, "valid": valid, "labels": labels}

    def build_head(self, vocab_size: int, config: ModelConfig) -> nn.Module:
        """The sentence scorer (as deep as the model's text decoders)."""
        return SentenceScorer(vocab_size, config.width, config.decoder.depth, config.num_heads, self.max_sentences,
                              config.mlp_ratio, config.dropout)

    def loss(self, head: nn.Module, fused: Fused, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the softmax over sentences against the oracle sentences (spread evenly)."""
        logits = head(target["tokens"], target["beyond"], target["valid"], fused.tokens, fused.valid)
        labels = target["labels"]
        wanted = labels / labels.sum(-1, keepdim=True).clamp_min(1.0)
        log_probs = torch.log_softmax(logits, dim=-1).masked_fill(~target["valid"], 0.0)
        return -(wanted * log_probs).sum(-1).mean()

    @torch.no_grad()
    def predict(self, head: nn.Module, fused: Fused, documents: Sequence[str]) -> list[str]:
        """Each row's summary: its ``count`` best-scored sentences, joined in document order."""
        sentences = [self.sentences(document) for document in documents]
        present = [row for row, s in enumerate(sentences) if s]
        out = [""] * len(documents)
        if not present:
            return out
        batch = self.collate([self.encode(sentences[row]) for row in present])
        batch = {k: v.to(fused.tokens.device) for k, v in batch.items()}
        rows = torch.tensor(present, device=fused.tokens.device)
        logits = head(batch["tokens"], batch["beyond"], batch["valid"], fused.tokens[rows], fused.valid[rows]).cpu()
        for i, row in enumerate(present):
            k = min(self.count, len(sentences[row]))
            picked = sorted(logits[i].topk(k).indices.tolist())
            out[row] = " ".join(sentences[row][j] for j in picked)
        return out


def documents_of(annotations: Sequence[dict[str, Any]], field: str) -> list[str]:
    """Each annotation's document text ('' where it has none)."""
    return [str(a.get(field) or "") for a in annotations]
