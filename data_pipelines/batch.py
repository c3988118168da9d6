"""The batch that travels from the loader to the model, and the forward cache's shared key.

The lowest module the loader, the modalities, the model and the balancers all read: it holds data
types only, so none of them has to import another to agree on what a batch is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from mmtl.text import PAD

# cache key under which ``MultiTaskModel.fuse`` records (shared output, detached copy) pairs when the
# cache holds it: the trainer's hook for gradient balancing on the shared representation
# (mmtl.balancing.backward)
SHARED_OUTPUTS = "shared_outputs"


@dataclass
class ModalityInput:
    """One extra modality of a batch: ``data`` (B, ...), per-row ``present`` (B,) and how many rows have it."""

    data: torch.Tensor
    present: torch.Tensor
    rows: int

    def to(self, device: torch.device | str) -> "ModalityInput":
        """The same input on ``device`` (non-blocking where the memory is pinned)."""
        return ModalityInput(self.data.to(device, non_blocking=True), self.present.to(device, non_blocking=True),
                             self.rows)


@dataclass
class Batch:
    """A multi-task batch. ``targets[task]`` holds that task's tensors and ``index``: its rows."""

    keys: list[str]
    image: torch.Tensor  # (B, 3, H, W) uint8
    has_image: torch.Tensor  # (B,) bool
    text: torch.Tensor  # (B, L) long, PAD-padded; L >= 1
    targets: dict[str, dict[str, torch.Tensor]]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    # corrupt samples dropped since the previous batch of the same worker: reason -> count and
    # shard -> count (they travel with the batch because the decoder lives in worker processes)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_shards: dict[str, int] = field(default_factory=dict)
    # modalities beyond image and text that at least one row carries (see data_pipelines.modalities)
    inputs: dict[str, ModalityInput] = field(default_factory=dict)
    # how many rows carry an image and a document ("image", "text"; extra modalities count theirs in
    # ``inputs``), known on the host so that models can skip an encoder without a device sync; {}: unknown
    rows_with: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows: Sequence[int]) -> "Batch":
        """The batch of ``rows`` only (targets re-indexed; skip counts stay with the original)."""
        rows = list(rows)
        where = {row: i for i, row in enumerate(rows)}
        targets = {}
        for task, target in self.targets.items():
            keep = [i for i, row in enumerate(target["index"].tolist()) if row in where]
            if keep:
                picked = {k: v[keep] for k, v in target.items() if k != "index"}
                index = torch.tensor([where[target["index"][i].item()] for i in keep], dtype=torch.long,
                                     device=target["index"].device)
                targets[task] = {"index": index, **picked}
        text = self.text[rows]
        length = max(1, int((text != PAD).sum(1).max())) if len(rows) else 1
        return Batch([self.keys[r] for r in rows], self.image[rows], self.has_image[rows], text[:, :length], targets,
                     [self.annotations[r] for r in rows] if self.annotations else [],
                     rows_with=rows_with(self.has_image[rows], text))

    def to(self, device: torch.device | str) -> "Batch":
        """Move tensors to ``device`` (non-blocking where the memory is pinned)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        targets = {task: {k: move(v) for k, v in t.items()} for task, t in self.targets.items()}
        return Batch(self.keys, move(self.image), move(self.has_image), move(self.text), targets, self.annotations,
                     self.skipped, self.skipped_shards, {k: v.to(device) for k, v in self.inputs.items()},
                     self.rows_with)


def rows_with(has_image: torch.Tensor, text: torch.Tensor) -> dict[str, int]:
    """Batch.rows_with from the presence of images and the PAD-padded document ids."""
    return {"image": int(has_image.sum()), "text": int((text != PAD).any(1).sum())}
