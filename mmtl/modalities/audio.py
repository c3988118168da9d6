"""Audio: waveforms stored as ``wav`` or ``flac``, resampled to one rate and length in the loader workers,
turned into log-mel spectrograms on the device (torch only, ``mel.py``) and encoded by a small CNN."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_pipelines.modalities import Modality
from data_pipelines.transforms import CorruptSampleError
from mmtl.config import ModelConfig
from mmtl.modalities.mel import LogMelSpectrogram
from mmtl.models.encoders import Stream
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


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
    """``model.modalities.audio``: waveforms are resampled to ``sample_rate`` and cut or padded to ``seconds``
    (in the loader workers); the encoder's log-mel spectrogram and CNN width."""

    sample_rate: int = 8000
    seconds: float = 1.0
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 48
    channels: int = 32


@MODALITIES.register("audio")
class AudioModality(Modality):
    """A short sound stored as ``wav`` or ``flac``; float32 (samples,) waveforms at ``sample_rate``, encoded by
    a small CNN over its log-mel spectrogram. Stands for the image by default."""

    name = "audio"
    sample_keys = ("wav", "flac")
    Settings = AudioSettings
    default_encoder = "audio_cnn"
    default_stands_for = "image"

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


class AudioCNNEncoder(nn.Module):
    """Log-mel spectrogram -> three stride-2 conv blocks -> one token per (mel band, frame) cell."""

    def __init__(self, width: int, sample_rate: int, samples: int, n_fft: int, hop_length: int, n_mels: int,
                 channels: int) -> None:
        super().__init__()
        self.mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels)
        self.input_norm = nn.BatchNorm2d(1)  # log-mel values have no fixed scale: learn one
        layers, previous = [], 1
        for out in (channels, 2 * channels, 2 * channels):
            layers += [nn.Conv2d(previous, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.GELU()]
            previous = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(previous, width)
        self.type_embedding = nn.Parameter(torch.zeros(width))
        self.eval()  # probe the token count without moving BatchNorm statistics
        with torch.no_grad():
            num_tokens = self._features(torch.zeros(1, samples)).shape[1]
        self.train()
        self.position = nn.Parameter(torch.randn(num_tokens, width) * 0.02)

    def _features(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.input_norm(self.mel(wave).unsqueeze(1)))
        return x.flatten(2).transpose(1, 2)

    def forward(self, wave: torch.Tensor, present: torch.Tensor) -> Stream:
        """``wave``: (B, samples) float."""
        tokens = self.proj(self._features(wave)) + self.position + self.type_embedding
        return Stream(tokens, present[:, None].expand(-1, tokens.shape[1]))


@MODALITY_ENCODERS.register("audio_cnn")
def audio_cnn_encoder(model: ModelConfig, modality: AudioModality) -> nn.Module:
    """The audio encoder sized by ``model.modalities.<name>``."""
    s = modality.settings
    return AudioCNNEncoder(model.width, s.sample_rate, modality.samples, s.n_fft, s.hop_length, s.n_mels, s.channels)
