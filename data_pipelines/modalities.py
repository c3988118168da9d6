"""Input modalities: the class each one extends, and how the data layer reads them (docs/architecture.md).

A modality is one class in one module (``mmtl/modalities/<name>.py``), registered in
``mmtl.registry.MODALITIES`` under its name. It holds everything about its kind of input: the
webdataset key(s) it is stored under, how a converter stores a user's file (``store``), how a stored
input becomes a tensor in the loader workers (``decode``), how the tensors of a batch are stacked with
a per-row presence mask (``collate``), how a user's file is read for prediction (``load``), where a
batch carries it, the modality it stands for, and its encoder. The loader, the converters and the
model find modalities through the registry only, so none of them imports a modality's module (or the
model code it holds); an encoder is built through a registry too (``MODALITY_ENCODERS`` by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from data_pipelines.batch import Batch
from data_pipelines.transforms import CorruptSampleError
from mmtl.config import ModalityConfig, ModelConfig, NoSettings, settings_of
from mmtl.errors import MMTLError
from mmtl.registry import MODALITIES, MODALITY_ENCODERS
from mmtl.text import Vocabulary

BUILTIN = ("image", "text")  # configured by model.image / model.text, carried by Batch.image / Batch.text


def read_input(source: str | Path | bytes, kind: str) -> tuple[bytes, str]:
    """The bytes of a user's input (a file path or the bytes themselves) and a label for messages."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), f"{kind} data"
    path = Path(source)
    if not path.is_file():
        raise MMTLError(f"{kind} file not found: {path}")
    return path.read_bytes(), str(path)


class Modality:
    """Base class of the modalities; subclasses register in ``mmtl.registry.MODALITIES`` under their ``name``.

    ``config`` is the modality's section (``model.modalities.<name>``); ``settings`` the values of its
    own ``Settings`` dataclass read from it.
    """

    name: ClassVar[str]
    # webdataset keys (file extensions) that hold this input; new samples are written under the first
    sample_keys: ClassVar[tuple[str, ...]] = ()
    Settings: ClassVar[type] = NoSettings
    default_encoder: ClassVar[str] = ""  # MODALITY_ENCODERS key used when the config names none
    default_stands_for: ClassVar[str] = ""  # modality whose tasks this one feeds by default
    # its encoder embeds vocabulary tokens (Stream.ids), which a copying decoder can copy
    carries_tokens: ClassVar[bool] = False

    def __init__(self, model: ModelConfig, config: ModalityConfig | None = None) -> None:
        self.model = model
        self.config = config or ModalityConfig()
        self.settings = settings_of(self.config, type(self), f"model.modalities.{self.name}")

    # -- the data side: read in the loader workers, the converters and prediction -------------------
    def decode(self, raw: dict[str, Any]) -> torch.Tensor | None:
        """This modality's tensor from a raw webdataset sample, or None when the sample lacks it.

        Raises :class:`data_pipelines.transforms.CorruptSampleError` for unreadable data.
        """
        key = next((k for k in self.sample_keys if k in raw), None)
        return None if key is None else self.decode_bytes(raw[key])

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        """One stored input (bytes) as the tensor the collator stacks."""
        raise NotImplementedError

    @classmethod
    def store(cls, path: str) -> tuple[str, bytes]:
        """(sample key, bytes) under which a converter stores the file at ``path``; CorruptSampleError when the
        file is not a usable input of this modality. Modalities that do not define it are not read from files."""
        raise NotImplementedError

    def load(self, source: str | Path | bytes) -> torch.Tensor:
        """A user's input (a file path or its bytes) as a tensor; an unreadable one is an MMTLError."""
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

    # -- the model side: read by MultiTaskModel ------------------------------------------------------
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


def model_modalities(model: ModelConfig) -> dict[str, Modality]:
    """Every modality of a model, in encoder order: image, text, then ``model.modalities``."""
    units = {name: MODALITIES.get(name)(model) for name in BUILTIN}
    units.update(extra_inputs(model))
    return units


def extra_inputs(model: ModelConfig) -> dict[str, Modality]:
    """The modalities of ``model.modalities`` (what the loader decodes into ``Batch.inputs``), by name."""
    return {name: MODALITIES.get(name)(model, section) for name, section in model.modalities.items()}


def store_input(name: str, path: str) -> tuple[str, bytes]:
    """(sample key, bytes) under which a converter stores the file at ``path`` of modality ``name``."""
    return MODALITIES.get(name).store(path)
