"""The multi-task model: modality encoders -> fusion -> one head per task (hard parameter sharing).

Tasks declare which modalities they read. The model encodes each needed modality once per
batch and fuses each distinct combination once, so recognition and captioning (image only)
share one fusion pass, and summarization (image + document) reuses the same image tokens.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from data_pipelines.loader import Batch
from mmtl.config import ModelConfig
from mmtl.models.encoders import Stream
from mmtl.models.fusion import Fused
from mmtl.registry import FUSIONS, IMAGE_ENCODERS, TEXT_ENCODERS
from mmtl.text import PAD, Vocabulary

# modality -> (batch -> (input tensor, per-row presence)); new modalities add an entry here
MODALITY_INPUTS: dict[str, Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]] = {
    "image": lambda batch: (batch.image, batch.has_image),
    "text": lambda batch: (batch.text, (batch.text != PAD).any(1)),
}


class MultiTaskModel(nn.Module):
    """Encoders, fusion and task heads assembled from a ModelConfig and a list of tasks."""

    def __init__(self, config: ModelConfig, tasks: Sequence[Any], vocab: Vocabulary) -> None:
        super().__init__()
        import mmtl.components  # noqa: F401  (registers built-in components)

        self.config = config
        self.tasks = {task.name: task for task in tasks}
        self.encoders = nn.ModuleDict({
            "image": IMAGE_ENCODERS.get(config.image.name).from_config(config, vocab),
            "text": TEXT_ENCODERS.get(config.text.name).from_config(config, vocab),
        })
        self.fusion = FUSIONS.get(config.fusion.name).from_config(config)
        self.heads = nn.ModuleDict({task.name: task.build_head(config) for task in tasks})

    def fuse(self, batch: Batch, modalities: tuple[str, ...], cache: dict) -> Fused:
        """Fused representation of ``modalities``, memoised in ``cache`` for this batch."""
        if modalities not in cache:
            streams: list[Stream] = []
            for modality in modalities:
                if modality not in cache:
                    data, present = MODALITY_INPUTS[modality](batch)
                    cache[modality] = self.encoders[modality](data, present)
                streams.append(cache[modality])
            cache[modalities] = self.fusion(streams)
        return cache[modalities]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss of every task that has targets in ``batch``."""
        cache: dict = {}
        losses = {}
        for name, target in batch.targets.items():
            task = self.tasks[name]
            fused = self.fuse(batch, task.inputs, cache).select(target["index"])
            losses[name] = task.loss(self.heads[name], fused, target)
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch, task_names: Sequence[str], options: Any = None) -> dict[str, list[Any]]:
        """Predictions of each named task for every row of ``batch``."""
        cache: dict = {}
        return {
            name: self.tasks[name].predict(self.heads[name], self.fuse(batch, self.tasks[name].inputs, cache), options)
            for name in task_names
        }

    def parameter_report(self) -> dict[str, int]:
        """Parameters shared by all tasks (encoders, fusion) and those specific to each task."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        report = {"shared": count(self.encoders) + count(self.fusion)}
        report.update({f"task:{name}": count(head) for name, head in self.heads.items()})
        report["total"] = count(self)
        return report
