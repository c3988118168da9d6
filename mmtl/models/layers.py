"""Transformer building blocks on ``F.scaled_dot_product_attention`` (pre-norm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, causal: bool = False,
    ) -> torch.Tensor:
        """``mask``: bool (B, 1, 1, S) or broadcastable, True where a key may be attended."""
        batch, length, width = x.shape
        context = x if context is None else context
        heads = self.num_heads
        q = self.q(x).view(batch, length, heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(batch, context.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Sequential):
    """Two-layer GELU feed-forward."""

    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention + MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, num_heads, dropout)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention, cross-attention to a memory, MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = Attention(width, num_heads, dropout)
        self.cross_attn = Attention(width, num_heads, dropout)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), causal=True)
        x = x + self.cross_attn(self.norm2(x), context=memory, mask=memory_mask)
        return x + self.mlp(self.norm3(x))


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) bool validity -> (B, 1, 1, S) attention mask for SDPA."""
    return valid[:, None, None, :]
