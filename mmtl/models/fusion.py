"""Fusion: the modality streams a task reads become one shared representation.

Every fusion prepends one learned global token, so a sample with a single modality (or a
missing one) always has something to attend to, and returns fused tokens plus a pooled vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.models.encoders import Stream
from mmtl.models.layers import MLP, EncoderBlock, key_mask
from mmtl.registry import FUSIONS


@dataclass
class Fused:
    """Shared representation: ``tokens`` (B, S, W), ``valid`` (B, S) bool, ``pooled`` (B, W)."""

    tokens: torch.Tensor
    valid: torch.Tensor
    pooled: torch.Tensor

    def select(self, rows: torch.Tensor) -> "Fused":
        """The rows ``rows`` of every tensor (a task's subset of the batch)."""
        if rows.numel() == self.tokens.shape[0]:
            return self
        return Fused(self.tokens[rows], self.valid[rows], self.pooled[rows])


def masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens of each row."""
    weights = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _concat(global_token: torch.Tensor, streams: list[Stream]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = streams[0].tokens.shape[0]
    first = global_token.expand(batch, 1, -1).to(streams[0].tokens.dtype)
    tokens = torch.cat([first] + [s.tokens for s in streams], dim=1)
    always = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
    valid = torch.cat([always] + [s.valid for s in streams], dim=1)
    return tokens, valid


@FUSIONS.register("single_stream")
class SingleStreamFusion(nn.Module):
    """Concatenate all streams and run a transformer encoder over them (ViLT/UNITER style)."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "SingleStreamFusion":
        return cls(config.width, config.fusion.depth, config.num_heads, config.mlp_ratio, config.dropout)

    def forward(self, streams: list[Stream]) -> Fused:
        tokens, valid = _concat(self.global_token, streams)
        mask = key_mask(valid)
        for block in self.blocks:
            tokens = block(tokens, mask)
        tokens = self.norm(tokens)
        return Fused(tokens, valid, masked_mean(tokens, valid))


@FUSIONS.register("late")
class LateFusion(nn.Module):
    """Cheap baseline: no cross-modal attention; pooled = MLP(sum of per-stream means)."""

    def __init__(self, width: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.mlp = MLP(width, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "LateFusion":
        return cls(config.width, config.mlp_ratio, config.dropout)

    def forward(self, streams: list[Stream]) -> Fused:
        tokens, valid = _concat(self.global_token, streams)
        pooled = sum(masked_mean(s.tokens, s.valid) for s in streams)
        pooled = self.norm(pooled + self.mlp(pooled))
        return Fused(self.norm(tokens), valid, pooled)
