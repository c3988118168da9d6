"""Depth maps: one-channel 2-D maps stored as ``depth.png`` (8- or 16-bit greyscale), encoded by any timm model
with ``in_chans=1`` (by default the image encoder's architecture)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.modalities.base import Modality
from mmtl.models.encoders import TimmImageEncoder
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


class MapModality(Modality):
    """A 2-D map with ``channels`` channels, kept as uint8 (C, S, S) until the encoder normalises it."""

    channels: int = 1
    default_encoder = "timm_map"
    default_stands_for = "image"

    @property
    def size(self) -> int:
        """Side of the square map in pixels (the image encoder's by default)."""
        return self.settings.size or self.model.image.image_size

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        from data_pipelines.transforms import decode_image, load_pixels, open_image, resize_center_crop, to_rgb

        if self.channels == 3:
            image = decode_image(data)
        else:
            opened = load_pixels(open_image(data))
            # 16-bit / float maps are scaled by their peak (to_rgb); colour maps become luminance
            image = opened if opened.mode == "L" else to_rgb(opened).convert("L")
        pixels = np.asarray(resize_center_crop(image, self.size), dtype=np.uint8)
        tensor = torch.from_numpy(pixels.copy())
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def build_encoder(self, vocab: Any) -> nn.Module:
        return MODALITY_ENCODERS.get(self.settings.encoder or self.default_encoder)(self.model, self)


@MODALITIES.register("depth")
class DepthModality(MapModality):
    """Depth (or any one-channel map: edges, thermal); stands for the image by default."""

    name = "depth"
    sample_keys = ("depth.png",)
    channels = 1


@MODALITY_ENCODERS.register("timm_map")
def timm_map_encoder(model: ModelConfig, modality: MapModality) -> nn.Module:
    """Any timm model read through ``forward_features``, with the map's number of input channels."""
    settings = modality.settings
    name = settings.timm_model or model.image.timm_model
    kwargs = settings.timm_kwargs or (model.image.timm_kwargs if not settings.timm_model else {})
    return TimmImageEncoder(name, kwargs, model.width, modality.size, in_chans=modality.channels,
                            key=f"model.modalities.{modality.name}")
