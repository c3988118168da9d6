"""Log-mel spectrograms with torch alone: STFT power spectrum -> triangular mel filterbank -> log."""
from __future__ import annotations

import math

import torch
from torch import nn


def hz_to_mel(hz: float | torch.Tensor) -> float | torch.Tensor:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    if isinstance(hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float | torch.Tensor) -> float | torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_centers(n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Centre frequency (Hz) of each of the ``n_mels`` filters, equally spaced on the mel scale."""
    f_max = sample_rate / 2 if f_max is None else f_max
    points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    return mel_to_hz(points)[1:-1].float()


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters: filter m rises from centre m-1 to m and falls to m+1."""
    f_max = sample_rate / 2 if f_max is None else f_max
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMelSpectrogram(nn.Module):
    """Waveforms (B, L) -> log-mel spectrograms (B, n_mels, frames), always computed in float32."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        if n_fft // 2 + 1 < n_mels:
            raise ValueError(f"n_fft={n_fft} gives {n_fft // 2 + 1} frequency bins, fewer than n_mels={n_mels}")
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            spectrum = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window,
                                  center=True, return_complex=True).abs().pow(2)
            return torch.log(self.filters @ spectrum + 1e-6)

    def frames(self, samples: int) -> int:
        """Number of frames of a waveform of ``samples`` samples."""
        return samples // self.hop_length + 1
