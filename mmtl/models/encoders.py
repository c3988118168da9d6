"""Modality encoders: each turns one input into width-sized tokens carrying a modality-type embedding."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.errors import ConfigError
from mmtl.models.layers import EncoderBlock, key_mask
from mmtl.registry import IMAGE_ENCODERS, TEXT_ENCODERS
from mmtl.text import PAD, Vocabulary


@dataclass
class Stream:
    """Tokens of one modality: ``tokens`` (B, S, W) and ``valid`` (B, S) bool."""

    tokens: torch.Tensor
    valid: torch.Tensor


@IMAGE_ENCODERS.register("timm")
class TimmImageEncoder(nn.Module):
    """Any timm model, read through ``forward_features`` (ViT tokens or CNN feature maps)."""

    def __init__(self, timm_model: str, timm_kwargs: dict, width: int, image_size: int,
                 pretrained_path: str | None = None) -> None:
        super().__init__()
        import timm

        overlay = None
        if pretrained_path is not None:
            if not Path(pretrained_path).is_file():
                raise ConfigError(f"model.image.pretrained_path: file not found: {pretrained_path}")
            overlay = {"file": str(pretrained_path)}
        try:
            self.backbone = timm.create_model(
                timm_model, pretrained=overlay is not None, pretrained_cfg_overlay=overlay, num_classes=0, **timm_kwargs
            )
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"model.image: cannot build timm model {timm_model!r}: {exc}") from None
        mean = self.backbone.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))
        std = self.backbone.pretrained_cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.proj = nn.Linear(self.backbone.num_features, width)
        self.type_embedding = nn.Parameter(torch.zeros(width))
        # CNN feature maps carry no explicit position into the fusion; give every token one
        num_tokens = self._features(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.position = nn.Parameter(torch.randn(num_tokens, width) * 0.02)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "TimmImageEncoder":
        image = config.image
        return cls(image.timm_model, image.timm_kwargs, config.width, image.image_size, image.pretrained_path)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x)
        if features.ndim == 4:  # CNN feature map (B, C, H, W) -> tokens
            features = features.flatten(2).transpose(1, 2)
        return features

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> Stream:
        """``image``: (B, 3, H, W) uint8; normalised here, on the device."""
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        tokens = self.proj(self._features(x)) + self.position + self.type_embedding
        return Stream(tokens, present[:, None].expand(-1, tokens.shape[1]))


@TEXT_ENCODERS.register("transformer")
class TransformerTextEncoder(nn.Module):
    """Bidirectional transformer over vocabulary ids (open_clip BPE tokens)."""

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, context_length: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(context_length, width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.type_embedding = nn.Parameter(torch.zeros(width))

    @classmethod
    def from_config(cls, config: ModelConfig, vocab: Vocabulary) -> "TransformerTextEncoder":
        return cls(vocab.size, config.width, config.text.depth, config.num_heads,
                   config.text.context_length, config.mlp_ratio, config.dropout)

    def forward(self, ids: torch.Tensor, present: torch.Tensor) -> Stream:
        """``ids``: (B, L) PAD-padded vocabulary ids."""
        valid = (ids != PAD) & present[:, None]
        x = self.embed(ids) + self.position[: ids.shape[1]]
        # a row with no text keeps one attendable key so attention stays finite; its tokens stay invalid
        mask = key_mask(valid | ~valid.any(1, keepdim=True))
        for block in self.blocks:
            x = block(x, mask)
        return Stream(self.norm(x) + self.type_embedding, valid)
