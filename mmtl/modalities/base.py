"""The model side of a modality: one registered unit per kind of input (see docs/architecture.md).

A unit extends the modality's data side (``data_pipelines.modalities``: sample keys, storing,
decoding, stacking, reading a user's file) with what the model needs: where a batch carries the
input, the modality it stands for, and the encoder that turns it into width-sized tokens carrying
its own modality-type embedding.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from data_pipelines.batch import Batch
from data_pipelines.modalities import ModalityData
from mmtl.registry import MODALITY_ENCODERS
from mmtl.text import Vocabulary


class Modality(ModalityData):
    """Base class; subclasses register in ``mmtl.registry.MODALITIES`` under their ``name``."""

    default_encoder: ClassVar[str] = ""  # MODALITY_ENCODERS key used when the config names none
    default_stands_for: ClassVar[str] = ""  # modality whose tasks this one feeds by default
    # its encoder embeds vocabulary tokens (Stream.ids), which a copying decoder can copy
    carries_tokens: ClassVar[bool] = False

    @property
    def stands_for(self) -> str:
        """The modality this one takes the place of for the tasks that read that one ("" if none)."""
        return self.config.stands_for or self.default_stands_for

    def batch_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(input tensor, per-row presence) of this modality in a batch."""
        entry = batch.inputs[self.name]
        return entry.data, entry.present

    def rows(self, batch: Batch) -> int | None:
        """How many rows of ``batch`` carry this modality (None: unknown without a device sync)."""
        return batch.inputs[self.name].rows if self.name in batch.inputs else 0

    def build_encoder(self, vocab: Vocabulary) -> nn.Module:
        """The encoder: input tensor + presence -> :class:`mmtl.models.encoders.Stream` at model width
        (by default the ``MODALITY_ENCODERS`` entry the settings name, else ``default_encoder``)."""
        return MODALITY_ENCODERS.get(self.config.encoder or self.default_encoder)(self.model, self)
