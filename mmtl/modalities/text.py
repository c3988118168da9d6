"""Text: the paired document (annotation field ``document``) as vocabulary ids, carried by ``Batch.text``,
encoded by the text encoder that ``model.text`` selects (``TEXT_ENCODERS``)."""
from __future__ import annotations

import torch
from torch import nn

from data_pipelines.batch import Batch
from data_pipelines.modalities import Modality
from data_pipelines.sample import TEXT_INPUT_FIELD
from data_pipelines.transforms import CorruptSampleError
from mmtl.registry import MODALITIES, TEXT_ENCODERS
from mmtl.text import PAD, Vocabulary


@MODALITIES.register("text")
class TextModality(Modality):
    """The paired document, read from the annotation by the loader, which holds the vocabulary."""

    name = "text"
    carries_tokens = True

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        raise CorruptSampleError("invalid_annotation", f"text is read from the json field {TEXT_INPUT_FIELD!r}")

    def batch_input(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.text, (batch.text != PAD).any(1)

    def rows(self, batch: Batch) -> int | None:
        return batch.rows_with.get("text")

    def build_encoder(self, vocab: Vocabulary) -> nn.Module:
        return TEXT_ENCODERS.get(self.model.text.name).from_config(self.model, vocab)
