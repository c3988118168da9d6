"""Depth maps: one-channel 2-D maps stored as ``depth.png`` (8- or 16-bit greyscale), encoded by any timm model
with ``in_chans=1`` (by default the image encoder's architecture)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from data_pipelines.modalities import DepthData, MapData, MapSettings
from mmtl.config import ModelConfig, settings_of
from mmtl.models.encoders import TimmImageEncoder
from mmtl.modalities.base import Modality
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


@dataclass
class TimmMapSettings(MapSettings):
    """A 2-D map encoded by a timm model: its name and arguments ("" and {}: the image encoder's)."""

    timm_model: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


@MODALITIES.register("depth")
class DepthModality(Modality, DepthData):
    """Depth (or any one-channel map: edges, thermal); stands for the image by default."""

    Settings = TimmMapSettings
    default_encoder = "timm_map"
    default_stands_for = "image"


@MODALITY_ENCODERS.register("timm_map")
def timm_map_encoder(model: ModelConfig, modality: MapData) -> nn.Module:
    """Any timm model read through ``forward_features``, with the map's number of input channels."""
    settings = modality.settings
    # the timm settings model.image holds (those of the preset when another image encoder is chosen)
    image = settings_of(model.image, TimmImageEncoder, "model.image")
    name = settings.timm_model or image.timm_model
    kwargs = settings.timm_kwargs or (image.timm_kwargs if not settings.timm_model else {})
    return TimmImageEncoder(name, kwargs, model.width, modality.size, in_chans=modality.channels,
                            key=f"model.modalities.{modality.name}")
