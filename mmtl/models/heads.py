"""Task heads over the shared representation."""
from __future__ import annotations

import torch
from torch import nn

from mmtl.models.layers import Attention, DecoderBlock, DecoderCache, key_mask
from mmtl.text import BOS, EOS, PAD


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
    """Causal transformer decoder with cross-attention to fused tokens; tied input/output embeddings."""

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, max_length: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)  # tied with the output layer: keep initial logits small
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for decoder input ``ids`` (B, T) that starts with BOS."""
        x = self.embed(ids) + self.position[: ids.shape[1]]
        mask = key_mask(memory_valid)
        for block in self.blocks:
            x = block(x, memory, mask)
        return self.norm(x) @ self.embed.weight.t()

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_valid: torch.Tensor, max_length: int,
                 use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding, batched; each row stops at its EOS. Returns ids (B, <= max_length) without BOS.

        With ``use_cache`` each new token costs one position (keys/values of earlier positions and
        of the memory are kept); without it every step re-runs the whole prefix. Both give the
        same tokens.
        """
        steps = min(max_length, self.max_length - 1)
        batch = memory.shape[0]
        ids = torch.full((batch, 1), BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        mask = key_mask(memory_valid)
        caches = [DecoderCache(block, memory) for block in self.blocks] if use_cache else None
        for position in range(steps):
            if caches is None:
                logits = self(ids, memory, memory_valid)[:, -1]
            else:
                x = self.embed(ids[:, -1:]) + self.position[position : position + 1]
                for block, cache in zip(self.blocks, caches):
                    x = block.step(x, cache, mask)
                logits = (self.norm(x) @ self.embed.weight.t())[:, -1]
            next_id = torch.where(done, torch.full_like(done, PAD, dtype=torch.long), logits.argmax(-1))
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            done |= next_id == EOS
            if bool(done.all()):
                break
        return ids[:, 1:]
