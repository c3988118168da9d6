"""Running the task-affinity measurement (:mod:`mmtl.balancing.affinity`) over a short training run."""
from __future__ import annotations

import torch

from mmtl.balancing.affinity import AffinityResult, lookahead_affinity, recommend_groups
from mmtl.config import ExperimentConfig
from mmtl.training.loop import Trainer


def measure_affinity(config: ExperimentConfig, every: int = 1, lookahead_lr: float = 0.01,
                     max_groups: int | None = None) -> AffinityResult:
    """Train ``config`` for ``train.steps`` and measure the lookahead affinity every ``every`` steps."""
    trainer = Trainer(config)
    batches = iter(trainer._loader())
    total = torch.zeros(len(config.tasks), len(config.tasks))
    count = torch.zeros_like(total)
    for step in range(config.train.steps):
        batch = next(batches).to(trainer.device)
        if step % every == 0:
            z = lookahead_affinity(trainer.model, trainer.backward.shared, config.tasks, batch, lookahead_lr)
            seen = ~torch.isnan(z)
            total += torch.where(seen, z, torch.zeros_like(z))
            count += seen
        trainer.train_step(batch, monitor=False)
    matrix = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    groups = recommend_groups(config.tasks, matrix, max_groups)
    return AffinityResult(list(config.tasks), matrix.tolist(), groups, int(count.max()))
