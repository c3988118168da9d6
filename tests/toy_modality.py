"""A toy modality in one module: importing it registers it (``tests/test_toy_modality.py``).

A short row of numbers stored as ``toy.txt`` (space-separated), one token per number in its encoder;
it stands for the image, so the tasks that read images read it when a batch carries it. Nothing else
in mmtl names it: this file is all a new modality needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data_pipelines.modalities import Modality
from data_pipelines.transforms import CorruptSampleError
from mmtl.config import ModelConfig
from mmtl.models.encoders import Stream
from mmtl.registry import MODALITIES, MODALITY_ENCODERS

NAME, ENCODER = "toy", "toy_tokens"


@dataclass
class ToySettings:
    """``model.modalities.toy``: how many numbers a sample holds."""

    length: int = 4


@MODALITIES.register(NAME)
class ToyModality(Modality):
    """A row of ``length`` numbers; stands for the image."""

    name = NAME
    sample_keys = ("toy.txt",)
    Settings = ToySettings
    default_encoder = ENCODER
    default_stands_for = "image"

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        try:
            values = [float(v) for v in data.decode().split()]
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptSampleError("invalid_annotation", f"toy: {exc}") from None
        if len(values) != self.settings.length:
            raise CorruptSampleError("invalid_annotation", f"toy: {len(values)} numbers, not {self.settings.length}")
        return torch.tensor(values)

    @classmethod
    def store(cls, path: str) -> tuple[str, bytes]:
        return cls.sample_keys[0], Path(path).read_bytes()


class ToyEncoder(nn.Module):
    """One token per number: value * learned direction + position + modality-type embedding."""

    def __init__(self, width: int, length: int) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.randn(width) * 0.02)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.type_embedding = nn.Parameter(torch.zeros(width))

    def forward(self, values: torch.Tensor, present: torch.Tensor) -> Stream:
        tokens = values[..., None] * self.direction + self.position + self.type_embedding
        return Stream(tokens, present[:, None].expand(-1, tokens.shape[1]))


@MODALITY_ENCODERS.register(ENCODER)
def toy_encoder(model: ModelConfig, modality: ToyModality) -> nn.Module:
    """The toy encoder at the model's width."""
    return ToyEncoder(model.width, modality.settings.length)
