"""Depth maps: one-channel 2-D maps stored as ``depth.png`` (8- or 16-bit greyscale), kept as uint8 until the
encoder normalises them, and encoded by any timm model with ``in_chans=1`` (by default the image encoder's
architecture). ``MapModality`` is the base of any such 2-D map (edges, thermal, ...)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from data_pipelines.modalities import Modality
from data_pipelines.transforms import decode_image, load_pixels, open_image, resize_center_crop, to_rgb
from mmtl.config import ModelConfig, settings_of
from mmtl.models.encoders import TimmImageEncoder
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


@dataclass
class MapSettings:
    """Settings of a 2-D map modality."""

    size: int = 0  # side in pixels (0: the image encoder's)


@dataclass
class TimmMapSettings(MapSettings):
    """A 2-D map encoded by a timm model: its name and arguments ("" and {}: the image encoder's)."""

    timm_model: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


class MapModality(Modality):
    """A 2-D map with ``channels`` channels, kept as uint8 (C, S, S) until the encoder normalises it."""

    channels: ClassVar[int] = 1
    Settings = TimmMapSettings
    default_encoder = "timm_map"

    @property
    def size(self) -> int:
        """Side of the square map in pixels (the image encoder's by default)."""
        return self.settings.size or self.model.image.image_size

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        if self.channels == 3:
            image = decode_image(data)
        else:
            opened = load_pixels(open_image(data))
            # 16-bit / float maps are scaled by their peak (to_rgb); colour maps become luminance
            image = opened if opened.mode == "L" else to_rgb(opened).convert("L")
        pixels = np.asarray(resize_center_crop(image, self.size), dtype=np.uint8)
        tensor = torch.from_numpy(pixels.copy())
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


@MODALITIES.register("depth")
class DepthModality(MapModality):
    """Depth (or any one-channel map: edges, thermal), stored as 8- or 16-bit greyscale PNG; stands for the
    image by default."""

    name = "depth"
    sample_keys = ("depth.png",)
    channels = 1
    default_stands_for = "image"

    @classmethod
    def store(cls, path: str) -> tuple[str, bytes]:
        """A PNG file as it is; any other image re-encoded as PNG (greyscale unless 16-bit or integer)."""
        data = Path(path).read_bytes()
        image = load_pixels(open_image(data))
        if image.format == "PNG":
            return cls.sample_keys[0], data
        buffer = io.BytesIO()
        (image if image.mode in ("L", "I;16", "I") else to_rgb(image).convert("L")).save(buffer, format="PNG")
        return cls.sample_keys[0], buffer.getvalue()


@MODALITY_ENCODERS.register("timm_map")
def timm_map_encoder(model: ModelConfig, modality: MapModality) -> nn.Module:
    """Any timm model read through ``forward_features``, with the map's number of input channels."""
    settings = modality.settings
    # the timm settings model.image holds (those of the preset when another image encoder is chosen)
    image = settings_of(model.image, TimmImageEncoder, "model.image")
    name = settings.timm_model or image.timm_model
    kwargs = settings.timm_kwargs or (image.timm_kwargs if not settings.timm_model else {})
    return TimmImageEncoder(name, kwargs, model.width, modality.size, in_chans=modality.channels,
                            key=f"model.modalities.{modality.name}")
