"""Watching the tasks: per-task gradient norms and pairwise gradient cosines (gradient conflict)."""
from __future__ import annotations

import torch


def task_gradient_stats(tasks: list[str], grads: torch.Tensor) -> dict[str, torch.Tensor]:
    """Log records from per-task gradients ``grads`` (T, D): ``grad_norm/<task>`` and ``grad_cos/<a>|<b>``.

    Values stay on the device; the caller converts them when it writes the log.
    """
    grads = grads.float()
    norms = grads.norm(dim=1)
    units = grads / norms.clamp_min(1e-12).unsqueeze(1)
    cosine = units @ units.T
    stats = {f"grad_norm/{task}": norms[i] for i, task in enumerate(tasks)}
    for i, a in enumerate(tasks):
        for j in range(i + 1, len(tasks)):
            stats[f"grad_cos/{a}|{tasks[j]}"] = cosine[i, j]
    return stats
