"""Task heads over the shared representation."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtl.models.layers import Attention, DecoderBlock, DecoderCache, key_mask
from mmtl.text import PAD


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


class TextDecoder(nn.Module):
    """Causal transformer decoder with cross-attention to fused tokens; tied input/output embeddings.

    ``prompt`` (W,), when given, is added to the first (BOS) position: a decoder shared by several
    tasks reads which task it is decoding for from it (OFA-style task prompt).
    """

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, max_length: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)  # tied with the output layer: keep initial logits small
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def _embed(self, ids: torch.Tensor, start: int, prompt: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(ids) + self.position[start : start + ids.shape[1]]
        if prompt is not None and start == 0:
            x = torch.cat([x[:, :1] + prompt.to(x.dtype), x[:, 1:]], dim=1)
        return x

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor,
                prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for decoder input ``ids`` (B, T) that starts with BOS."""
        x = self._embed(ids, 0, prompt)
        mask = key_mask(memory_valid)
        for block in self.blocks:
            x = block(x, memory, mask)
        return self.norm(x) @ self.embed.weight.t()

    def new_caches(self, memory: torch.Tensor) -> list[DecoderCache]:
        """Empty key/value caches (memory keys/values precomputed) for :meth:`step`."""
        return [DecoderCache(block, memory) for block in self.blocks]

    def step(self, ids: torch.Tensor, caches: list[DecoderCache], memory_mask: torch.Tensor,
             prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) of the position after ``ids`` (B, 1), the newest token; extends ``caches``."""
        x = self._embed(ids, caches[0].length, prompt)
        for block, cache in zip(self.blocks, caches):
            x = block.step(x, cache, memory_mask)
        return (self.norm(x) @ self.embed.weight.t())[:, -1]

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, max_length: int | None = None,
                 use_cache: bool = True, config: Any = None) -> torch.Tensor:
        """Decode ids (B, <= max_length), without BOS, PAD after each row's EOS (see mmtl.models.generation).

        ``config`` is a GenerationConfig (greedy when None). With ``use_cache`` each new token
        costs one position; without it every step re-runs the whole prefix. Both give the same tokens.
        """
        from mmtl.models.generation import generate

        return generate(self, memory, memory_valid, config, max_length=max_length, use_cache=use_cache)


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

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        return self.decoder(ids, memory, memory_valid, prompt=self.prompt)

    def new_caches(self, memory: torch.Tensor) -> list[DecoderCache]:
        return self.decoder.new_caches(memory)

    def step(self, ids: torch.Tensor, caches: list[DecoderCache], memory_mask: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(ids, caches, memory_mask, prompt=self.prompt)

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, max_length: int | None = None,
                 use_cache: bool = True, config: Any = None) -> torch.Tensor:
        """As :meth:`TextDecoder.generate`, decoding for this head's task."""
        from mmtl.models.generation import generate

        return generate(self, memory, memory_valid, config, max_length=max_length, use_cache=use_cache)
