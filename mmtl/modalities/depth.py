"""Depth maps: one-channel 2-D maps stored as ``depth.png`` (8- or 16-bit greyscale), encoded by any timm model
with ``in_chans=1`` (by default the image encoder's architecture)."""
from __future__ import annotations

from torch import nn

from data_pipelines.modalities import DepthData, MapData
from mmtl.config import ModelConfig
from mmtl.models.encoders import TimmImageEncoder
from mmtl.modalities.base import Modality
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


@MODALITIES.register("depth")
class DepthModality(Modality, DepthData):
    """Depth (or any one-channel map: edges, thermal); stands for the image by default."""

    default_encoder = "timm_map"
    default_stands_for = "image"


@MODALITY_ENCODERS.register("timm_map")
def timm_map_encoder(model: ModelConfig, modality: MapData) -> nn.Module:
    """Any timm model read through ``forward_features``, with the map's number of input channels."""
    settings = modality.settings
    name = settings.timm_model or model.image.timm_model
    kwargs = settings.timm_kwargs or (model.image.timm_kwargs if not settings.timm_model else {})
    return TimmImageEncoder(name, kwargs, model.width, modality.size, in_chans=modality.channels,
                            key=f"model.modalities.{modality.name}")
