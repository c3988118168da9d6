"""Image and text as modality units. Their batch tensors keep their own Batch fields (``image``,
``has_image``, ``text``) and their encoders the config sections ``model.image`` / ``model.text``."""
from __future__ import annotations

import torch
from torch import nn

from data_pipelines.batch import Batch
from data_pipelines.modalities import ImageData, TextData
from mmtl.modalities.base import Modality
from mmtl.registry import IMAGE_ENCODERS, MODALITIES, TEXT_ENCODERS
from mmtl.text import PAD, Vocabulary


@MODALITIES.register("image")
class ImageModality(Modality, ImageData):
    """RGB pictures: uint8 (3, S, S), normalised on the device by the image encoder."""

    def batch_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.image, batch.has_image

    def rows(self, batch: Batch) -> int | None:
        return batch.rows_with.get("image")

    def build_encoder(self, vocab: Vocabulary) -> nn.Module:
        return IMAGE_ENCODERS.get(self.model.image.name).from_config(self.model, vocab)


@MODALITIES.register("text")
class TextModality(Modality, TextData):
    """The paired document as vocabulary ids (annotation field ``document``)."""

    carries_tokens = True

    def batch_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.text, (batch.text != PAD).any(1)

    def rows(self, batch: Batch) -> int | None:
        return batch.rows_with.get("text")

    def build_encoder(self, vocab: Vocabulary) -> nn.Module:
        return TEXT_ENCODERS.get(self.model.text.name).from_config(self.model, vocab)
