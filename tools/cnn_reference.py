"""The smallest plain baseline of tools/bench_recipe.py ``--cnn``: a 2-convolution CNN in a 30-line loop.

Two 3x3 convolutions (32 and 64 channels), each followed by ReLU and 2x2 max-pooling, then one linear
layer over the flattened map; Adam at a constant learning rate of 1e-3, cross-entropy (single-label)
or binary cross-entropy summed over classes (multi-label), batches drawn from a fresh permutation of
the decoded training rows each epoch (the rows tools/recipe_reference.py decoded into memory). What a
user would write first for small images; issue #29 asks a small preset to match its accuracy within
twice its CPU time. Timed with ``time.process_time`` (CPU seconds, meant for one thread), which a
loaded machine inflates far less than wall time.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from recipe_reference import Prepared, next_rows, recognition_loss, recognition_predictions
from mmtl.tasks.base import Task
from mmtl.tasks.generation import GenerationTask


def classifies_images(task: Task) -> bool:
    """Whether ``task`` reads images and predicts classes (what the 2-convolution CNN does)."""
    return "image" in task.required_inputs and not isinstance(task, GenerationTask)


class TwoConvCNN(nn.Module):
    """conv3x3-ReLU-maxpool twice, flatten, linear; uint8 images in, class logits out."""

    def __init__(self, classes: int, image_size: int, channels: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(channels[1] * (image_size // 4) ** 2, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image.float() / 255 - 0.5).flatten(1))


@dataclass
class CnnRun:
    """One CNN training: the task's metrics, CPU and wall seconds of the loop, per-step losses."""

    metrics: dict[str, float]
    cpu_seconds: float
    seconds: float
    losses: list[float]


def train_cnn(task: Task, train_rows: Prepared, eval_rows: Prepared, steps: int, batch_size: int,
              seed: int, threshold: float = 0.5) -> CnnRun:
    """Train :class:`TwoConvCNN` for ``steps`` Adam steps of ``batch_size`` rows on the CPU; score on ``eval_rows``
    (``threshold``: the multi-label decision threshold, mmtl's ``eval.threshold``)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    classes, single = list(task.context.classes), task.context.label_mode == "single"
    model = TwoConvCNN(len(classes), int(train_rows.inputs[0].shape[-1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order: list[int] = []
    losses: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        rows = next_rows(order, rng, len(train_rows.inputs), batch_size)
        logits = model(torch.stack([train_rows.inputs[i] for i in rows]))
        loss = recognition_loss(logits, [train_rows.targets[i] for i in rows], single)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    model.eval()
    with torch.no_grad():
        predictions = [p for start in range(0, len(eval_rows.inputs), 64)
                       for p in recognition_predictions(model(torch.stack(eval_rows.inputs[start:start + 64])),
                                                        classes, single)]
    return CnnRun(task.score(predictions, eval_rows.references, threshold), cpu, wall, losses)
