"""Which tasks belong together: inter-task affinity by lookahead (Task Affinity Grouping).

Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task Groupings for Multi-Task
Learning", NeurIPS 2021. During a short training run, every ``every`` steps and for each task i,
the shared parameters take one SGD step of size ``lookahead_lr`` on task i's loss alone; the
affinity of i onto j is Z[i, j] = 1 - L_j(after) / L_j(before), on the same batch, after which
the parameters (and normalisation buffers) are restored. Z is averaged over the measured steps.
A positive Z[i, j] means that training on i helps j.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from data_pipelines.batch import Batch


@dataclass
class AffinityResult:
    """Mean lookahead affinity ``matrix[i][j]`` (task i's update onto task j) and the recommended grouping."""

    tasks: list[str]
    matrix: list[list[float]]
    groups: list[list[str]]
    measurements: int

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "affinity": self.matrix, "groups": self.groups, "measurements": self.measurements}


def lookahead_affinity(model: nn.Module, shared: Sequence[torch.Tensor], tasks: Sequence[str], batch: Batch,
                       lookahead_lr: float) -> torch.Tensor:
    """Z (T, T) on one batch for ``model`` whose ``shared`` parameters take the lookahead steps (``tasks``
    order; NaN where a task is absent from the batch)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    saved = [p.detach().clone() for p in shared]
    model.train()
    losses = model(batch)
    before = {t: loss.detach() for t, loss in losses.items()}
    z = torch.full((len(tasks), len(tasks)), float("nan"))
    # all gradients first: the lookahead steps change the parameters in place
    task_grads = {task: torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                  for task, loss in losses.items()}
    del losses
    for i, task in enumerate(tasks):
        if task not in task_grads:
            continue
        grads = task_grads[task]
        with torch.no_grad():
            for param, grad in zip(shared, grads):
                if grad is not None:
                    param.sub_(lookahead_lr * grad)
            after = model(batch)
            for j, other in enumerate(tasks):
                if other in after:
                    z[i, j] = float(1 - after[other] / before[other])
            for param, value in zip(shared, saved):
                param.copy_(value)
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return z


def partitions(items: list[str]) -> Iterator[list[list[str]]]:
    """Every partition of ``items`` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        for k in range(len(smaller)):
            yield smaller[:k] + [[first] + smaller[k]] + smaller[k + 1:]
        yield [[first]] + smaller


def recommend_groups(tasks: list[str], matrix: torch.Tensor, max_groups: int | None = None) -> list[list[str]]:
    """The partition that maximises the mean, over tasks, of the affinity onto each task from its group-mates.

    A task alone scores 0 (TAG's criterion with one model per group); ties go to fewer groups.
    """
    index = {t: i for i, t in enumerate(tasks)}

    def score(groups: list[list[str]]) -> float:
        total = 0.0
        for group in groups:
            for t in group:
                mates = [matrix[index[s], index[t]] for s in group if s != t and not torch.isnan(matrix[index[s], index[t]])]
                total += float(sum(mates) / len(mates)) if mates else 0.0
        return total / len(tasks)

    options = [p for p in partitions(list(tasks)) if max_groups is None or len(p) <= max_groups]
    return max(options, key=lambda p: (round(score(p), 12), -len(p)))


def format_affinity(result: AffinityResult) -> str:
    """The affinity matrix as a table (row: the task whose update is taken) and the grouping."""
    width = max(len(t) for t in result.tasks) + 2
    lines = ["affinity (row's update onto column's loss, x1e3)".ljust(width),
             " " * width + "".join(t[:10].rjust(12) for t in result.tasks)]
    for task, row in zip(result.tasks, result.matrix):
        lines.append(task.ljust(width) + "".join(f"{1000 * v:12.3f}" for v in row))
    lines.append("recommended grouping: " + " | ".join("{" + ", ".join(g) + "}" for g in result.groups))
    return "\n".join(lines)


def plot_affinity(result: AffinityResult, path: Path) -> Path:
    """Heat map of the affinity matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = torch.tensor(result.matrix)
    limit = float(torch.nan_to_num(data).abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    image = ax.imshow(data.numpy(), cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(result.tasks)), result.tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(result.tasks)), result.tasks)
    ax.set(title="lookahead affinity (row -> column)", xlabel="loss of", ylabel="update by")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
