"""The modality interface: one registered unit per kind of input (see docs/architecture.md).

A modality owns everything about one input: the webdataset key(s) it is stored under, how a
sample's bytes become a tensor (in the loader workers), how tensors of a batch are stacked with a
per-row presence mask, how a user's file is read for prediction, and which encoder turns it into
width-sized tokens carrying its own modality-type embedding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmtl.config import ModalityConfig, ModelConfig
from mmtl.errors import MMTLError


def read_input(source: str | Path | bytes, kind: str) -> tuple[bytes, str]:
    """The bytes of a user's input (a file path or the bytes themselves) and a label for messages."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), f"{kind} data"
    path = Path(source)
    if not path.is_file():
        raise MMTLError(f"{kind} file not found: {path}")
    return path.read_bytes(), str(path)


class Modality:
    """Base class; subclasses register in ``mmtl.registry.MODALITIES`` under their ``name``."""

    name: ClassVar[str]
    sample_keys: ClassVar[tuple[str, ...]]  # webdataset keys (file extensions) that hold this input
    default_encoder: ClassVar[str] = ""  # MODALITY_ENCODERS key used when the config names none
    default_stands_for: ClassVar[str] = ""  # modality whose tasks this one feeds by default
    # its encoder embeds vocabulary tokens (Stream.ids), which a copying decoder can copy
    carries_tokens: ClassVar[bool] = False

    def __init__(self, model: ModelConfig, settings: ModalityConfig | None = None) -> None:
        self.model = model
        self.settings = settings or ModalityConfig()

    @property
    def stands_for(self) -> str:
        """The modality this one takes the place of for the tasks that read that one ("" if none)."""
        return self.settings.stands_for or self.default_stands_for

    def decode(self, raw: dict[str, Any]) -> torch.Tensor | None:
        """This modality's tensor from a raw webdataset sample, or None when the sample lacks it.

        Raises :class:`data_pipelines.transforms.CorruptSampleError` for unreadable data.
        """
        key = next((k for k in self.sample_keys if k in raw), None)
        return None if key is None else self.decode_bytes(raw[key])

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        """One stored input (bytes) as the tensor the collator stacks."""
        raise NotImplementedError

    def load(self, source: str | Path | bytes) -> torch.Tensor:
        """A user's input (a file path or its bytes) as a tensor; an unreadable one is an MMTLError."""
        from data_pipelines.transforms import CorruptSampleError

        data, label = read_input(source, self.name)
        try:
            return self.decode_bytes(data)
        except CorruptSampleError as exc:
            raise MMTLError(f"{label} is not a readable {self.name} input ({exc.detail})") from None

    def collate(self, items: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack equally shaped items; a missing one is zeros with presence False."""
        shape = next(t.shape for t in items if t is not None)
        dtype = next(t.dtype for t in items if t is not None)
        data = torch.zeros(len(items), *shape, dtype=dtype)
        present = torch.zeros(len(items), dtype=torch.bool)
        for row, item in enumerate(items):
            if item is not None:
                data[row] = item
                present[row] = True
        return data, present

    def batch_input(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(input tensor, per-row presence) of this modality in a :class:`data_pipelines.loader.Batch`."""
        entry = batch.inputs[self.name]
        return entry.data, entry.present

    def build_encoder(self, vocab: Any) -> nn.Module:
        """The encoder: input tensor + presence -> :class:`mmtl.models.encoders.Stream` at model width."""
        raise NotImplementedError
