"""Parameter sharing of the fusion trunk between tasks: hard, soft (cross-stitch) and hybrid (LoRA + MMoE).

``build_fusion(config, task_names)`` returns the fusion module of a model. With ``hard`` sharing it
is the plain fusion (one trunk for all tasks). The other modes return a module with
``task_specific = True`` whose ``forward(streams, tasks)`` gives one Fused per task.

Task-specific parameters always live under a ``per_task`` ModuleDict keyed by task name, so
``MultiTaskModel.parameter_report`` can split shared from task-specific parameters by name.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from mmtl.config import ModelConfig
from mmtl.errors import ConfigError
from mmtl.models.encoders import Stream
from mmtl.models.fusion import Fused, LayeredFusion
from mmtl.models.layers import MLP, Attention
from mmtl.registry import FUSIONS, Registry

PER_TASK = "per_task"  # name of every ModuleDict that holds task-specific parameters

SHARING: Registry = Registry("parameter sharing mode")


def build_fusion(config: ModelConfig, task_names: Sequence[str]) -> nn.Module:
    """The fusion trunk of a model for ``task_names``, shared as ``config.sharing`` says."""
    make = lambda: FUSIONS.get(config.fusion.name).from_config(config)  # noqa: E731
    return SHARING.get(config.sharing)(make, list(task_names), config)


@SHARING.register("hard")
def hard_sharing(make: Callable[[], nn.Module], task_names: list[str], config: ModelConfig) -> nn.Module:
    """One trunk for every task (the plain fusion module)."""
    return make()


@SHARING.register("soft")
class CrossStitchSharing(nn.Module):
    """One trunk per task; after every layer, each trunk's hidden state becomes a learned mix of all
    trunks' (cross-stitch units, Misra et al. 2016). The mixing matrices are shared parameters."""

    task_specific = True

    def __init__(self, make: Callable[[], nn.Module], task_names: list[str], config: ModelConfig) -> None:
        super().__init__()
        self.task_names = task_names
        self.per_task = nn.ModuleDict({name: make() for name in task_names})
        first = self.per_task[task_names[0]]
        if not isinstance(first, LayeredFusion):
            raise ConfigError(f"model.sharing=soft needs a fusion with layers (a LayeredFusion); "
                              f"{config.fusion.name!r} is a {type(first).__name__}")
        tasks, layers = len(task_names), len(first.layers())
        # start near independent trunks: 0.9 on the diagonal, the rest spread over the others
        off = 0.1 / (tasks - 1) if tasks > 1 else 0.0
        init = torch.full((tasks, tasks), off).fill_diagonal_(0.9 if tasks > 1 else 1.0)
        self.stitch = nn.Parameter(init.repeat(layers, 1, 1))

    def forward(self, streams: list[Stream], tasks: Sequence[str] | None = None) -> dict[str, Fused]:
        """Fused per task, for every task (the trunks depend on each other, so all run)."""
        trunks = [self.per_task[name] for name in self.task_names]
        states = [trunk.begin(streams) for trunk in trunks]
        for index in range(self.stitch.shape[0]):
            hidden = torch.stack([trunk.run_layer(trunk.layers()[index], state) for trunk, state in zip(trunks, states)])
            mixed = torch.einsum("ts,s...->t...", self.stitch[index].to(hidden.dtype), hidden)
            for state, h in zip(states, mixed):
                state.hidden = h
        return {name: trunk.end(state) for name, trunk, state in zip(self.task_names, trunks, states)}


class TaskAware(nn.Module):
    """A module whose computation depends on the task being fused (set through :func:`set_task`)."""

    task: str | None = None


class LoRALinear(TaskAware):
    """A shared linear layer plus one low-rank update per task: y = W x + (B_t A_t x) * alpha / r."""

    def __init__(self, base: nn.Linear, task_names: list[str], rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        self.scale = (alpha or rank) / rank
        self.per_task = nn.ModuleDict()
        for name in task_names:
            adapter = nn.Module()
            adapter.down = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
            adapter.up = nn.Parameter(torch.zeros(base.out_features, rank))  # starts as the shared layer
            self.per_task[name] = adapter

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.task is None:
            return y
        return y + self.delta(x, self.per_task[self.task])

    def delta(self, x: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
        """The low-rank update of ``adapter`` (one of ``per_task``) for input ``x``."""
        return (x @ adapter.down.t().to(x.dtype)) @ adapter.up.t().to(x.dtype) * self.scale


class TaskGatedMoE(TaskAware):
    """Multi-gate mixture of experts (MMoE, Ma et al. 2018): shared expert MLPs, one softmax gate per task."""

    def __init__(self, width: int, experts: int, task_names: list[str], mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.experts = nn.ModuleList(MLP(width, mlp_ratio, dropout) for _ in range(experts))
        self.per_task = nn.ModuleDict({name: nn.Linear(width, experts) for name in task_names})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)  # (..., W, E)
        if self.task is None:  # no task: the experts' mean
            return outputs.mean(-1)
        gate = self.per_task[self.task](x).softmax(-1)
        return (outputs * gate.unsqueeze(-2)).sum(-1)


def set_task(module: nn.Module, task: str | None) -> None:
    """Point every TaskAware submodule of ``module`` at ``task``."""
    for sub in module.modules():
        if isinstance(sub, TaskAware):
            sub.task = task


@SHARING.register("hybrid")
class HybridSharing(nn.Module):
    """A shared trunk with task-specific parts: a LoRA adapter per task on the fusion's attention
    projections (and on its feed-forward layers), and with ``model.moe_experts > 0`` a task-gated
    mixture of experts in place of each feed-forward layer."""

    task_specific = True

    def __init__(self, make: Callable[[], nn.Module], task_names: list[str], config: ModelConfig) -> None:
        super().__init__()
        self.task_names = task_names
        self.trunk = make()
        if config.moe_experts > 0:
            _replace(self.trunk, lambda m: isinstance(m, MLP),
                     lambda m: TaskGatedMoE(config.width, config.moe_experts, task_names, config.mlp_ratio, config.dropout))
        # experts are shared; with MoE the gates are the feed-forward's task-specific part
        targets = (Attention,) if config.moe_experts > 0 else (Attention, MLP)
        for owner in [m for m in self.trunk.modules() if isinstance(m, targets)]:
            _replace(owner, lambda m: isinstance(m, nn.Linear),
                     lambda m: LoRALinear(m, task_names, config.lora_rank), recurse=False)

    def forward(self, streams: list[Stream], tasks: Sequence[str] | None = None) -> dict[str, Fused]:
        """Fused per requested task (one trunk pass each, with that task's adapters and gates)."""
        out = {}
        try:
            for name in tasks or self.task_names:
                set_task(self.trunk, name)
                out[name] = self.trunk(streams)
        finally:
            set_task(self.trunk, None)
        return out


def _replace(root: nn.Module, match: Callable[[nn.Module], bool], build: Callable[[nn.Module], nn.Module],
             recurse: bool = True) -> None:
    """Replace every direct child of ``root`` (and, with ``recurse``, of its descendants) that ``match``es."""
    parents = list(root.modules()) if recurse else [root]
    for parent in parents:
        for name, child in list(parent.named_children()):
            if match(child) and not isinstance(child, TaskAware):
                setattr(parent, name, build(child))
