"""Sentence scorer of extractive summarization: one query per document sentence reads the fused tokens."""
from __future__ import annotations

import torch
from torch import nn

from mmtl.models.layers import DecoderBlock, key_mask
from mmtl.text import PAD


class SentenceScorer(nn.Module):
    """Scores the sentences of a document for an extractive summary (one logit per sentence).

    Each sentence becomes a query: the mean of its own token embeddings (so a sentence past the
    text encoder's context, which the fused tokens never saw, still has content to be judged by),
    plus an embedding of its index in the document and, for a sentence that starts past the text
    context, a learned "beyond the context" vector. The queries see each other (which sentences
    compete) and cross-attend to the fused tokens (what the document and image say), in the same
    blocks as a non-causal decoder, as BERTSum's inter-sentence layers do over sentence vectors.
    """

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, max_sentences: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(max_sentences, width) * 0.02)
        self.beyond = nn.Parameter(torch.randn(width) * 0.02)
        self.norm_in = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio, dropout, causal=False)
                                    for _ in range(max(depth, 1)))
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor, beyond: torch.Tensor, valid: torch.Tensor,
                memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """Logits (B, S), -inf at padded sentences.

        ``tokens`` (B, S, T): each sentence's vocabulary ids, PAD-padded; ``beyond`` (B, S) bool:
        the sentence starts past the text context; ``valid`` (B, S) bool: a real sentence;
        ``memory`` (B, M, W) / ``memory_valid`` (B, M): the fused tokens.
        """
        present = (tokens != PAD).unsqueeze(-1)
        bag = (self.embed(tokens) * present).sum(2) / present.sum(2).clamp_min(1)
        x = bag + self.position[: tokens.shape[1]] + beyond.unsqueeze(-1) * self.beyond
        x = self.norm_in(x.to(memory.dtype))
        sentence_mask, memory_mask = key_mask(valid), key_mask(memory_valid)
        for block in self.blocks:
            x = block(x, memory, memory_mask, sentence_mask)
        logits = self.score(self.norm(x)).squeeze(-1).float()
        return logits.masked_fill(~valid, float("-inf"))
