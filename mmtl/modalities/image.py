"""Image and text as modality units. Their batch tensors keep their own Batch fields (``image``,
``has_image``, ``text``) and their encoders the config sections ``model.image`` / ``model.text``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD
from mmtl.modalities.base import Modality
from mmtl.registry import IMAGE_ENCODERS, MODALITIES, TEXT_ENCODERS
from mmtl.text import PAD


@MODALITIES.register("image")
class ImageModality(Modality):
    """RGB pictures: uint8 (3, S, S), normalised on the device by the image encoder."""

    name = "image"
    sample_keys = IMAGE_KEYS

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        from data_pipelines.transforms import image_tensor

        return image_tensor(data, self.model.image.image_size)

    def batch_input(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.image, batch.has_image

    def build_encoder(self, vocab: Any) -> nn.Module:
        return IMAGE_ENCODERS.get(self.model.image.name).from_config(self.model, vocab)


@MODALITIES.register("text")
class TextModality(Modality):
    """The paired document as vocabulary ids (annotation field ``document``)."""

    name = "text"
    sample_keys = ()  # read from the annotation's ``document`` by the loader, which holds the vocabulary
    carries_tokens = True

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        from data_pipelines.transforms import CorruptSampleError

        raise CorruptSampleError("invalid_annotation", f"text is read from the json field {TEXT_INPUT_FIELD!r}")

    def batch_input(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.text, (batch.text != PAD).any(1)

    def build_encoder(self, vocab: Any) -> nn.Module:
        return TEXT_ENCODERS.get(self.model.text.name).from_config(self.model, vocab)
