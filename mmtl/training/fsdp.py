"""Fully sharded data parallelism (``train.fsdp=true``) with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Parameters, gradients and optimiser state are sharded over the ranks. The units are the model's
units (``MultiTaskModel.units``: every mmtl transformer block and the blocks of third-party
encoders), and the root model, which holds everything else. Each unit's parameters are all-gathered just before it
runs and freed after; its gradients are reduce-scattered (averaged over the ranks) in the backward
pass, which is exactly the averaging ``distributed.average_gradients`` does for DDP, so the
global-batch loss scaling of ``distributed.global_losses`` carries over unchanged.

A unit's all-gather is a collective, so every rank must run the same units in each forward pass.
A task's head runs only when the rank's batch has rows of that task: ``shard_model`` therefore
checks, before each forward, that all ranks have the same tasks and stops with a clear error
otherwise (instead of hanging).

Checkpoints keep the single-process format (``model.safetensors``, an ordinary
``optimizer.state_dict()`` in ``train_state.pt``): the helpers here gather full tensors (a
collective: every rank calls them, rank 0 gets the result) and shard them again on resume.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mmtl.checkpoint import load_weights, tied_names
from mmtl.errors import MMTLError
from mmtl.models.layers import units_of
from mmtl.training import distributed

log = logging.getLogger(__name__)


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (a parameter, gradient or optimiser state) is a sharded DTensor."""
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``tensor`` (a collective for a DTensor: every rank must call it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _present_tasks_hook(tasks: list[str]):
    """A forward pre-hook that stops the run when the ranks' batches hold different tasks."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        batch = args[0] if args else kwargs["batch"]
        present = torch.tensor([float(t in batch.targets) for t in tasks], device=next(module.parameters()).device)
        both = torch.cat([present, -present])
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        anywhere, everywhere = both[:len(tasks)], -both[len(tasks):]
        uneven = [t for t, a, e in zip(tasks, anywhere.tolist(), everywhere.tolist()) if a != e]
        if uneven:
            raise MMTLError(
                f"train.fsdp: task(s) {', '.join(uneven)} have rows on some ranks but not others in this step, "
                "and sharded units must run on every rank; raise data.batch_size, or train with DDP "
                "(train.fsdp=false), which handles it")

    return hook


def shard_model(model: nn.Module) -> int:
    """Shard ``model`` in place over the default process group; returns the number of FSDP units.

    Call it after the model is on its device (and in its final dtype) and before the optimiser
    is built: ``fully_shard`` replaces the parameters with sharded DTensors.
    """
    from torch.distributed.fsdp import fully_shard

    units = units_of(model)
    if hasattr(model, "skip_absent_modalities"):  # all ranks must run the same units, whatever their rows
        model.skip_absent_modalities = False
    for unit in units:
        fully_shard(unit)
    root = fully_shard(model)
    # a parameter of the root unit that got no gradient on this rank (e.g. a task head whose task is
    # absent) contributes zeros, so that every rank's reduce-scatter has the same size
    root.set_reduce_scatter_unused_params(True)
    tasks = list(getattr(model, "tasks", {}))
    if tasks:
        model.register_forward_pre_hook(_present_tasks_hook(tasks), with_kwargs=True)
    log.info("train.fsdp: %d sharded blocks + the root, over %d ranks", len(units),
             torch.distributed.get_world_size())
    return len(units) + 1


def gather_model_state(model: nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """The full model state dict on CPU on rank 0 (``main``), tied weights once; ``{}`` on the others.

    A collective: every rank must call it.
    """
    aliases = {name for names in tied_names(model) for name in names[1:]}
    out = {}
    for name, tensor in model.state_dict().items():
        value = full(tensor.detach())  # every rank takes part in the all-gather
        if main and name not in aliases:
            out[name] = value.cpu().clone()
    return out


class StateDictModule(nn.Module):
    """A module whose ``state_dict()`` is a given dict: lets ``safetensors.torch.save_model`` (and so
    the usual checkpoint writer) save gathered weights in exactly the usual format."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self._state)


def load_model_state(model: nn.Module, file: Path) -> None:
    """Load a ``model.safetensors`` written by any run (sharded or not) into the sharded ``model``.

    Every rank reads the file and keeps its own shard of each tensor.
    """
    load_weights(model, file.parent, file.name, assign=_copy_into)


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full ``value`` into ``target`` (a DTensor keeps only its own shard)."""
    value = value.to(device=target.device, dtype=target.dtype)
    if isinstance(target, DTensor):
        target.to_local().copy_(distribute_tensor(value, target.device_mesh, target.placements).to_local())
    else:
        target.copy_(value)


def gather_optimizer_state(optimizer: torch.optim.Optimizer, main: bool) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor made whole, on CPU, on rank 0 (the
    format a single process writes); ``{}`` on the others. A collective: every rank must call it."""
    state = optimizer.state_dict()
    gathered: dict[int, dict[str, Any]] = {}
    for index in sorted(state["state"]):
        gathered[index] = {key: (full(value).cpu().clone() if isinstance(value, torch.Tensor) else value)
                           for key, value in state["state"][index].items()}
    return {"state": gathered, "param_groups": state["param_groups"]} if main else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full ``optimizer.state_dict()`` (from any run) into an optimiser over sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        sharded[index] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and isinstance(param, DTensor) and value.shape == param.shape:
                value = distribute_tensor(value.to(device=param.device, dtype=param.dtype),
                                          param.device_mesh, param.placements)
            sharded[index][key] = value
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


def shard_for_training(model: nn.Module, config: Any, context: Any) -> bool:
    """Apply ``train.fsdp`` (``config`` is the TrainConfig, ``context`` the DistContext); True when sharded.

    One process trains unsharded (with a warning). Under torchrun every rank first takes rank 0's
    initial weights (a broadcast must not touch sharded parameters), then the model is sharded.
    """
    if not config.fsdp:
        return False
    if not context.enabled:
        log.warning("train.fsdp=true in a single process: nothing to shard over, training unsharded "
                    "(launch with torchrun --nproc_per_node N to shard)")
        return False
    distributed.broadcast_module(model)
    shard_model(model)
    if config.monitor_every > 0:
        log.warning("train.fsdp: the per-task gradient monitor (train.monitor_every) is off under sharding")
    return True
