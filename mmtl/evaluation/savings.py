"""What one multi-task model saves against separate single-task models: parameters and forward FLOPs.

FLOPs per sample are counted with ``mmtl.flop_count`` on one sample that supervises every
task, inputs at their longest (:func:`mmtl.evaluation.info.example_batch`), through the training
forward (teacher-forced heads, no generation loop, so the count does not depend on what the model
happens to generate). The multi-task model runs all its tasks in *one* forward, which encodes each
modality once and fuses each input combination once (hard sharing); the separate models each run
their own encoders, fusion and head. So the saving is the shared encoder and fusion passes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mmtl.builder import Components
from mmtl.checkpoint import load_checkpoint
from mmtl.config import ExperimentConfig
from mmtl.evaluation.info import example_batch
from mmtl.flop_count import count_flops


def forward_flops_per_sample(components: Components, config: ExperimentConfig,
                             tasks: Sequence[str] | None = None) -> int:
    """FLOPs of one forward of ``components.model`` over all its tasks (or ``tasks``) on one full-length sample."""
    model = components.model
    device = next(model.parameters()).device
    batch = example_batch(components, config, tasks).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_flops(lambda: model(batch))
    finally:
        model.train(was_training)


def checkpoint_flops_per_sample(run: str | Path) -> int:
    """:func:`forward_flops_per_sample` of the model saved in a run or checkpoint directory (on the CPU)."""
    components, config, _, _ = load_checkpoint(run)
    return forward_flops_per_sample(components, config)


def savings(multi_task: int, separate: Mapping[str, int]) -> dict[str, Any]:
    """Cost of one multi-task model vs the sum of separate models' costs (parameters or FLOPs).

    ``ratio`` = separate / multi-task (how many times more the separate models cost) and
    ``saved`` = 1 - multi-task / separate (the fraction the multi-task model saves).
    """
    total = sum(separate.values())
    return {"multi_task": multi_task, "separate_models": total, "per_task": dict(separate),
            "ratio": total / multi_task if multi_task else float("nan"),
            "saved": 1.0 - multi_task / total if total else float("nan")}


def format_savings(name: str, report: Mapping[str, Any], unit: str = "") -> str:
    """One line: ``name: N in one multi-task model vs M in separate single-task models (r x, s% saved)``."""
    def show(value: float) -> str:
        return f"{value / 1e6:,.2f} M{unit}" if unit else f"{int(value):,}"

    return (f"{name}: {show(report['multi_task'])} in one multi-task model vs {show(report['separate_models'])} "
            f"in separate single-task models ({report['ratio']:.2f}x, {100 * report['saved']:.1f}% saved)")
