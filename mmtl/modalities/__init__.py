"""Input modalities, one module each, registered in ``mmtl.registry.MODALITIES`` when imported: image, text,
depth, audio (in that order: converters store a sample's files in registry order). The class they extend
is :class:`data_pipelines.modalities.Modality`."""
from __future__ import annotations

from data_pipelines.modalities import BUILTIN, Modality, model_modalities
from mmtl.modalities import image, text, depth, audio  # noqa: F401,I001  (registers them, in this order)

__all__ = ["BUILTIN", "Modality", "model_modalities"]
