"""Input modalities as registered units (``mmtl.registry.MODALITIES``): image, text, depth, audio."""
from __future__ import annotations

from mmtl.config import ModelConfig
from mmtl.modalities import audio, depth, image  # noqa: F401  (registers the built-in modalities)
from mmtl.modalities.base import Modality
from mmtl.registry import MODALITIES

BUILTIN = ("image", "text")  # configured by model.image / model.text, carried by Batch.image / Batch.text


def model_modalities(model: ModelConfig) -> dict[str, Modality]:
    """Every modality of a model, in encoder order: image, text, then ``model.modalities``."""
    units = {name: MODALITIES.get(name)(model) for name in BUILTIN}
    units.update(extra_modalities(model))
    return units


def extra_modalities(model: ModelConfig) -> dict[str, Modality]:
    """The modalities of ``model.modalities`` (those the loader decodes into ``Batch.inputs``)."""
    return {name: MODALITIES.get(name)(model, section) for name, section in model.modalities.items()}


__all__ = ["BUILTIN", "Modality", "extra_modalities", "model_modalities"]
