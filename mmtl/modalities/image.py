"""Images: RGB pictures stored as ``jpg`` / ``png`` / ``webp``, carried by ``Batch.image`` / ``Batch.has_image``,
encoded by the image encoder that ``model.image`` selects (``IMAGE_ENCODERS``)."""
from __future__ import annotations

import torch
from torch import nn

from data_pipelines.batch import Batch
from data_pipelines.modalities import Modality
from data_pipelines.sample import IMAGE_KEYS
from data_pipelines.transforms import image_tensor
from mmtl.registry import IMAGE_ENCODERS, MODALITIES
from mmtl.text import Vocabulary


@MODALITIES.register("image")
class ImageModality(Modality):
    """RGB pictures: uint8 (3, S, S) at the image encoder's size, normalised on the device by the encoder."""

    name = "image"
    sample_keys = IMAGE_KEYS

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        return image_tensor(data, self.model.image.image_size)

    def batch_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.image, batch.has_image

    def rows(self, batch: Batch) -> int | None:
        return batch.rows_with.get("image")

    def build_encoder(self, vocab: Vocabulary) -> nn.Module:
        return IMAGE_ENCODERS.get(self.model.image.name).from_config(self.model, vocab)
