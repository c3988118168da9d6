"""Input modalities as registered units (``mmtl.registry.MODALITIES``): image, text, depth, audio."""
from __future__ import annotations

from data_pipelines.modalities import BUILTIN, model_modalities
from mmtl.modalities import audio, depth, image  # noqa: F401  (registers the built-in modalities)
from mmtl.modalities.base import Modality

__all__ = ["BUILTIN", "Modality", "model_modalities"]
