"""Audio: waveforms stored as ``wav`` or ``flac``, resampled to one rate and length in the loader workers,
turned into log-mel spectrograms on the device (torch only) and encoded by a small CNN."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipelines.modalities import AudioData, AudioSettings
from mmtl.config import ModelConfig
from mmtl.modalities.base import Modality
from mmtl.modalities.mel import LogMelSpectrogram
from mmtl.models.encoders import Stream
from mmtl.registry import MODALITIES, MODALITY_ENCODERS


@dataclass
class AudioModelSettings(AudioSettings):
    """``model.modalities.audio``: the data side's settings and the log-mel spectrogram and CNN of its encoder."""

    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 48
    channels: int = 32


@MODALITIES.register("audio")
class AudioModality(Modality, AudioData):
    """A short sound, encoded by a small CNN over its log-mel spectrogram. Stands for the image by default."""

    Settings = AudioModelSettings
    default_encoder = "audio_cnn"
    default_stands_for = "image"


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
