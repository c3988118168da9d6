"""What a user of the model adds to it without the model knowing what it is.

``MultiTaskModel.extension`` is one :class:`ModelExtension`; the model calls each hook at its place
(fusing, running a head, computing the losses, switching training mode, building the optimiser).
The default does nothing. Fine-tuning's adapters, frozen parts, learning-rate factors and
alignment loss are one such extension (``mmtl.models.adaptation``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Hashable, Iterator, Sequence

import torch
from torch import nn


class ModelExtension:
    """The hooks of a model extension; each default leaves the model as it is."""

    def variant(self, modalities: Sequence[str], task: str | None) -> Hashable:
        """A key that sets the computations for ``modalities`` and ``task`` apart from the others (they are
        cached apart and run inside :meth:`applied`); None: the model's plain computation."""
        return None

    @contextmanager
    def applied(self, modules: Sequence[nn.Module], variant: Hashable) -> Iterator[None]:
        """Run ``modules`` as computation ``variant`` (from :meth:`variant`) for the duration."""
        yield

    def objectives(self) -> list[str]:
        """Names of the losses :meth:`losses` may add to the tasks'."""
        return []

    def losses(self, model: nn.Module, batch: Any, cache: dict) -> dict[str, torch.Tensor]:
        """Losses beyond the tasks' for ``batch`` (``cache``: the model's forward cache)."""
        return {}

    def after_train(self, model: nn.Module, mode: bool) -> None:
        """Called after ``model.train(mode)`` switched every module."""

    def lr_scale(self, name: str) -> float:
        """Learning-rate factor of the model's parameter ``name``."""
        return 1.0
