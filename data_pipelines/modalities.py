"""The data side of the input modalities: how each is stored in a sample and read back (docs/architecture.md).

One unit per modality, registered in ``mmtl.registry.MODALITY_DATA`` under its name: the webdataset
key(s) it is stored under, how a converter stores a user's file (``store``), how a stored input
becomes a tensor in the loader workers (``decode``), how the tensors of a batch are stacked with a
per-row presence mask (``collate``) and how a user's file is read for prediction (``load``). The model
side (its encoder, the modality it stands for) is in ``mmtl.modalities``, whose units extend these.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from data_pipelines.sample import IMAGE_KEYS, TEXT_INPUT_FIELD
from data_pipelines.transforms import (
    CorruptSampleError, decode_image, image_tensor, load_pixels, open_image, resize_center_crop, to_rgb,
)
from mmtl.config import ModalityConfig, ModelConfig, NoSettings, settings_of
from mmtl.errors import MMTLError
from mmtl.registry import MODALITIES, MODALITY_DATA

BUILTIN = ("image", "text")  # configured by model.image / model.text, carried by Batch.image / Batch.text


def read_input(source: str | Path | bytes, kind: str) -> tuple[bytes, str]:
    """The bytes of a user's input (a file path or the bytes themselves) and a label for messages."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), f"{kind} data"
    path = Path(source)
    if not path.is_file():
        raise MMTLError(f"{kind} file not found: {path}")
    return path.read_bytes(), str(path)


class ModalityData:
    """Base class; subclasses register in ``mmtl.registry.MODALITY_DATA`` under their ``name``.

    ``config`` is the modality's section (``model.modalities.<name>``); ``settings`` the values of its
    own ``Settings`` dataclass read from it (the model side's units extend the dataclass).
    """

    name: ClassVar[str]
    # webdataset keys (file extensions) that hold this input; new samples are written under the first
    sample_keys: ClassVar[tuple[str, ...]]
    Settings: ClassVar[type] = NoSettings

    def __init__(self, model: ModelConfig, config: ModalityConfig | None = None) -> None:
        self.model = model
        self.config = config or ModalityConfig()
        self.settings = settings_of(self.config, type(self), f"model.modalities.{self.name}")

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
        file is not a usable input of this modality."""
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


@MODALITY_DATA.register("image")
class ImageData(ModalityData):
    """RGB pictures: uint8 (3, S, S) at the image encoder's size."""

    name = "image"
    sample_keys = IMAGE_KEYS

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        return image_tensor(data, self.model.image.image_size)


@MODALITY_DATA.register("text")
class TextData(ModalityData):
    """The paired document, read from the annotation by the loader, which holds the vocabulary."""

    name = "text"
    sample_keys = ()

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        raise CorruptSampleError("invalid_annotation", f"text is read from the json field {TEXT_INPUT_FIELD!r}")


@dataclass
class MapSettings:
    """Settings of a 2-D map modality."""

    size: int = 0  # side in pixels (0: the image encoder's)


class MapData(ModalityData):
    """A 2-D map with ``channels`` channels, kept as uint8 (C, S, S) until the encoder normalises it."""

    channels: ClassVar[int] = 1
    Settings = MapSettings

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


@MODALITY_DATA.register("depth")
class DepthData(MapData):
    """Depth (or any one-channel map: edges, thermal), stored as 8- or 16-bit greyscale PNG."""

    name = "depth"
    sample_keys = ("depth.png",)
    channels = 1

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


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate) of wav/flac bytes; CorruptSampleError when unreadable."""
    import soundfile

    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001  libsndfile reports every bad stream as one of several types
        raise CorruptSampleError("undecodable_audio", str(exc) or type(exc).__name__) from None
    if wave.size == 0:
        raise CorruptSampleError("undecodable_audio", "no audio samples")
    return wave.mean(axis=1), int(rate)


def fit_waveform(wave: torch.Tensor, rate: int, target_rate: int, samples: int) -> torch.Tensor:
    """Linear resampling to ``target_rate``, then cut or zero-padded to ``samples``."""
    if rate != target_rate:
        length = max(1, round(wave.numel() * target_rate / rate))
        wave = F.interpolate(wave.view(1, 1, -1), size=length, mode="linear", align_corners=False).view(-1)
    return F.pad(wave[:samples], (0, max(0, samples - wave.numel())))


@dataclass
class AudioSettings:
    """Settings of the audio modality's data side: waveforms are resampled to ``sample_rate`` and cut or
    padded to ``seconds``."""

    sample_rate: int = 8000
    seconds: float = 1.0


@MODALITY_DATA.register("audio")
class AudioData(ModalityData):
    """A short sound stored as ``wav`` or ``flac``; float32 (samples,) waveforms at ``sample_rate``."""

    name = "audio"
    sample_keys = ("wav", "flac")
    Settings = AudioSettings

    @property
    def samples(self) -> int:
        """Waveform length in samples."""
        return int(round(self.settings.sample_rate * self.settings.seconds))

    def decode_bytes(self, data: bytes) -> torch.Tensor:
        wave, rate = read_audio(data)
        return fit_waveform(torch.from_numpy(wave), rate, self.settings.sample_rate, self.samples)

    @classmethod
    def store(cls, path: str) -> tuple[str, bytes]:
        """A wav or flac file as it is, under its own format's key, once libsndfile can read its header."""
        data = Path(path).read_bytes()
        key = Path(path).suffix.lower()[1:]
        if key not in cls.sample_keys:
            raise CorruptSampleError("undecodable_audio",
                                     f"{path}: audio must be {' or '.join('.' + k for k in cls.sample_keys)}")
        import soundfile

        try:
            soundfile.info(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001  libsndfile reports bad streams as several types
            raise CorruptSampleError("undecodable_audio", f"{path}: {exc}") from None
        return key, data


def extra_inputs(model: ModelConfig) -> dict[str, ModalityData]:
    """The data units of ``model.modalities`` (what the loader decodes into ``Batch.inputs``), by name."""
    return {name: MODALITY_DATA.get(name)(model, section) for name, section in model.modalities.items()}


def file_modalities() -> list[str]:
    """Modalities a converter reads from files that a row names (the ones that define ``store``), by name."""
    return [name for name, unit in MODALITY_DATA.items() if unit.store.__func__ is not ModalityData.store.__func__]


def store_input(name: str, path: str) -> tuple[str, bytes]:
    """(sample key, bytes) under which a converter stores the file at ``path`` of modality ``name``."""
    return MODALITY_DATA.get(name).store(path)


def model_modalities(model: ModelConfig) -> dict[str, Any]:
    """Every modality unit of a model (``MODALITIES``), in encoder order: image, text, then ``model.modalities``."""
    units = {name: MODALITIES.get(name)(model) for name in BUILTIN}
    units.update({name: MODALITIES.get(name)(model, section) for name, section in model.modalities.items()})
    return units
