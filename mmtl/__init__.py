"""mmtl: one PyTorch model that learns several vision-and-language tasks at once."""
from __future__ import annotations

from typing import Any

from mmtl.version import __version__

__all__ = ["Predictor", "PredictionResult", "__version__"]


def __getattr__(name: str) -> Any:
    # imported lazily so that `mmtl --help` does not pay for importing torch
    if name in ("Predictor", "PredictionResult"):
        from mmtl import inference

        return getattr(inference, name)
    raise AttributeError(name)
