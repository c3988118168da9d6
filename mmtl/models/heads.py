"""Task heads over the shared representation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmtl.models.fusion import masked_mean
from mmtl.models.generation import decoder_text, generate
from mmtl.models.layers import Attention, DecoderBlock, DecoderCache, key_mask
from mmtl.models.words import WordTable
from mmtl.registry import Registry
from mmtl.text import PAD

# heads that score classes from the fused tokens: key -> class built as ``cls(width, num_classes, num_heads)``,
# whose forward maps tokens (B, S, W) and validity (B, S) to logits (B, C)
CLASS_HEADS: Registry = Registry("class head")


@CLASS_HEADS.register("queries")
class ClassQueryHead(nn.Module):
    """Multi-label classifier in which each class has a learned query that attends to the fused tokens.

    Query2Label (Liu et al., 2021): a class looks for its own evidence among the tokens instead of
    reading one pooled vector, which matters when objects are small. One logit per class.
    """

    def __init__(self, width: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_classes, width) * 0.02)
        self.norm_q, self.norm_kv, self.norm_out = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.classifier = nn.Parameter(torch.randn(num_classes, width) * 0.02)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from fused ``tokens`` (B, S, W) with validity ``valid`` (B, S)."""
        queries = self.norm_q(self.queries).expand(tokens.shape[0], -1, -1)
        found = self.attn(queries, context=self.norm_kv(tokens), mask=key_mask(valid))
        return (self.norm_out(found + queries) * self.classifier).sum(-1) + self.bias


@CLASS_HEADS.register("pooled")
class PooledClassHead(nn.Module):
    """Average of the valid fused tokens, LayerNorm, one linear layer: the plain recipe's average pool +
    linear classifier, on the shared representation. ``num_heads`` is unused (same signature as the others)."""

    def __init__(self, width: int, num_classes: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from fused ``tokens`` (B, S, W) with validity ``valid`` (B, S)."""
        return self.classifier(self.norm(masked_mean(tokens, valid)))


@dataclass(frozen=True)
class DecoderOptions:
    """A text decoder's optional parts: block width ratio, dropout, the copy gate, tied input/output embeddings."""

    mlp_ratio: float = 4.0
    dropout: float = 0.0
    copy: bool = False
    tie_embeddings: bool = False


class TextDecoder(nn.Module):
    """Causal transformer decoder with cross-attention to fused tokens.

    The output layer is its own linear map over the vocabulary, and token embeddings start at unit
    scale (as ``nn.Embedding`` and PyTorch's own transformer recipes). With ``tie_embeddings`` the output
    reuses the embedding, which then has to start small (std 0.02) to keep the first logits small;
    that small input embedding made captioning learn late and erratically over seeds (BLEU-4 64 to
    77.5 at 560 steps on shapes world, against 76-77 untied).

    ``prompt`` (W,), when given, is added to the first (BOS) position: a decoder shared by several
    tasks reads which task it is decoding for from it (OFA-style task prompt).

    With ``copy`` (pointer-generator, See et al., 2017), each position also attends to the fused
    tokens that came from text (``memory_ids``) and mixes "copy that token" into its distribution
    with a learned gate: names and rare words of a document can be reproduced from the first steps
    instead of being learned as vocabulary entries. The output is then log-probabilities, which
    every consumer of logits (softmax, cross-entropy, argmax) reads unchanged.
    """

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, max_length: int,
                 options: DecoderOptions = DecoderOptions()) -> None:
        super().__init__()
        mlp_ratio, dropout, copy, tie_embeddings = options.mlp_ratio, options.dropout, options.copy, options.tie_embeddings
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)  # N(0, 1), PAD row zero
        self.out = None if tie_embeddings else nn.Linear(width, vocab_size)
        if tie_embeddings:  # the embedding is the output layer too: keep the first logits small
            nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.copy = CopyAttention(width) if copy else None

    def _embed(self, ids: torch.Tensor, start: int, prompt: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(ids) + self.position[start : start + ids.shape[1]]
        if prompt is not None and start == 0:
            x = torch.cat([x[:, :1] + prompt.to(x.dtype), x[:, 1:]], dim=1)
        return x

    def _output(self, x: torch.Tensor, copy_source: "CopySource | None") -> torch.Tensor:
        hidden = self.norm(x)
        logits = hidden @ self.embed.weight.t() if self.out is None else self.out(hidden)
        if self.copy is None or copy_source is None:
            return logits
        return self.copy(hidden, logits, copy_source)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor,
                prompt: torch.Tensor | None = None, memory_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for decoder input ``ids`` (B, T) that starts with BOS (log-probabilities
        when copying from ``memory_ids``, the vocabulary ids behind the memory's text tokens)."""
        x = self._embed(ids, 0, prompt)
        mask = key_mask(memory_valid)
        for block in self.blocks:
            x = block(x, memory, mask)
        return self._output(x, self.copy_source(memory, memory_valid, memory_ids))

    def copy_source(self, memory: torch.Tensor, memory_valid: torch.Tensor,
                    memory_ids: torch.Tensor | None) -> "CopySource | None":
        """What the copy mechanism reads from the memory (None without copying or without text in it)."""
        if self.copy is None or memory_ids is None:
            return None
        return CopySource(self.copy.keys(memory), memory_ids, memory_valid & (memory_ids != PAD))

    def new_caches(self, memory: torch.Tensor, memory_valid: torch.Tensor | None = None,
                   memory_ids: torch.Tensor | None = None) -> list[DecoderCache]:
        """Empty key/value caches (memory keys/values precomputed) for :meth:`step`; the first one
        also carries the copy source when copying from ``memory_ids``."""
        caches = [DecoderCache(block, memory) for block in self.blocks]
        if memory_valid is not None:
            caches[0].copy_source = self.copy_source(memory, memory_valid, memory_ids)
        return caches

    def step(self, ids: torch.Tensor, caches: list[DecoderCache], memory_mask: torch.Tensor,
             prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) of the position after ``ids`` (B, 1), the newest token; extends ``caches``."""
        x = self._embed(ids, caches[0].length, prompt)
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache, memory_mask)
        return self._output(x, caches[0].copy_source)[:, -1]

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, max_length: int | None = None,
                 use_cache: bool = True, config: Any = None, memory_ids: torch.Tensor | None = None,
                 words: WordTable | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ids (B, <= max_length), without BOS, PAD after each row's EOS (see mmtl.models.generation).

        ``config`` is a GenerationConfig (greedy when None). With ``use_cache`` each new token
        costs one position; without it every step re-runs the whole prefix. Both give the same tokens.
        ``words``: the vocabulary's word table, for whole-word decoding (mmtl.models.words);
        ``document_ids``: the text the rules read as the document (default ``memory_ids``).
        """
        return generate(self, memory, memory_valid, config, max_length=max_length, use_cache=use_cache,
                        text=decoder_text(memory_ids, document_ids), words=words)


@dataclass
class CopySource:
    """The memory as the copy mechanism sees it: projected keys (B, S, W), the vocabulary id of each
    position (B, S) and which positions may be copied (B, S): valid text tokens."""

    keys: torch.Tensor
    ids: torch.Tensor
    copyable: torch.Tensor


class CopyAttention(nn.Module):
    """Pointer-generator output: p = g * softmax(logits) + (1 - g) * attention over copyable tokens."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(width, width), nn.Linear(width, width)
        self.gate = nn.Linear(width, 1)
        self.scale = width ** -0.5

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Projected memory keys (computed once per decoded batch), in fp32."""
        with torch.autocast(memory.device.type, enabled=False):
            return _linear_fp32(self.key, memory)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, source: CopySource) -> torch.Tensor:
        """Log-probabilities (B, T, V) mixing the generator's ``logits`` with copying from ``source``.

        Computed in fp32 whatever the autocast or the weights' dtype: like a loss, it takes the log of
        probabilities that can be tiny, and its backward pass divides by them.
        """
        with torch.autocast(hidden.device.type, enabled=False):
            return self._mix(hidden.float(), logits.float(), source)

    def _mix(self, hidden: torch.Tensor, logits: torch.Tensor, source: CopySource) -> torch.Tensor:
        scores = (_linear_fp32(self.query, hidden) @ source.keys.float().transpose(1, 2)) * self.scale
        scores = scores.masked_fill(~source.copyable[:, None, :], float("-inf"))
        # rows without a copyable token get an all-zero copy distribution and generate only
        attention = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        copied = torch.zeros(logits.shape, dtype=attention.dtype, device=logits.device)
        copied.scatter_add_(2, source.ids[:, None, :].expand(-1, hidden.shape[1], -1), attention)
        generate = torch.sigmoid(_linear_fp32(self.gate, hidden))
        generate = torch.where(source.copyable.any(1)[:, None, None], generate, torch.ones_like(generate))
        probs = generate * logits.softmax(-1) + (1 - generate) * copied
        return probs.clamp_min(1e-12).log()


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in fp32, whatever the dtype of the weights (pure bf16 training) and of ``x``."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class PromptedDecoder(nn.Module):
    """One task's view of a decoder shared by several generation tasks: a learned task prompt.

    The shared decoder is held outside the module tree (``MultiTaskModel.shared_heads`` owns it),
    so its parameters are counted and saved once; this head's own parameters are the prompt only.
    """

    def __init__(self, decoder: TextDecoder) -> None:
        super().__init__()
        object.__setattr__(self, "decoder", decoder)  # not a submodule: see the class docstring
        self.prompt = nn.Parameter(torch.randn(decoder.position.shape[1]) * 0.02)
        self.max_length = decoder.max_length

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor,
                memory_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(ids, memory, memory_valid, prompt=self.prompt, memory_ids=memory_ids)

    def new_caches(self, memory: torch.Tensor, memory_valid: torch.Tensor | None = None,
                   memory_ids: torch.Tensor | None = None) -> list[DecoderCache]:
        return self.decoder.new_caches(memory, memory_valid, memory_ids)

    def step(self, ids: torch.Tensor, caches: list[DecoderCache], memory_mask: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(ids, caches, memory_mask, prompt=self.prompt)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, max_length: int | None = None,
                 use_cache: bool = True, config: Any = None, memory_ids: torch.Tensor | None = None,
                 words: WordTable | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`TextDecoder.generate`, decoding for this head's task."""
        return generate(self, memory, memory_valid, config, max_length=max_length, use_cache=use_cache,
                        text=decoder_text(memory_ids, document_ids), words=words)
