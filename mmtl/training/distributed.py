"""Data-parallel training under torchrun, on torch.distributed (NCCL on GPUs, gloo on CPUs).

Why not ``DistributedDataParallel``: gradient balancers write the combined gradient into
``.grad`` themselves (per-task ``autograd.grad``), which DDP's backward hooks never see. So the
synchronisation is explicit and happens once per optimiser step, *after* the balancer:

1. ``global_losses``: every rank's per-task losses are all-reduced (weighted by how many rows or
   tokens each rank had), and each loss carries the global value while keeping its local
   gradient. Every balancer therefore sees the same numbers on every rank and takes the same
   decision, and averaging the resulting gradients gives exactly the gradient of one process on
   the global batch. Gradient balancers on the parameters balance the all-reduced per-task
   gradients (``all_reduce_mean``); on the representation they balance rows with the global Gram
   matrix (``mmtl.balancing.backward``).
2. ``average_gradients``: the ranks first agree on which parameters received a gradient anywhere
   (a task may be absent from one rank's batch), then all-reduce the gradients in one flat buffer
   per dtype.

Launch: ``torchrun --nproc_per_node N -m mmtl train --config FILE`` (multi-node: torchrun's
``--nnodes``/``--rdzv-*`` flags). Rank 0 writes logs and checkpoints; every rank reads its own part
of the data.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from mmtl.balancing.backward import BalancedBackward
from mmtl.balancing.base import Balancer
from mmtl.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world_size, local_rank)


def local_device(name: str, context: DistContext) -> str:
    """``cuda`` under torchrun means this rank's own GPU."""
    if context.enabled and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{context.local_rank}"
    return name


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (identical start, whatever the RNG did)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def global_losses(losses: dict[str, torch.Tensor], counts: dict[str, torch.Tensor | int], tasks: list[str],
                  context: DistContext) -> dict[str, torch.Tensor]:
    """Per-task losses whose values are the global-batch means and whose gradients are local.

    ``counts[task]`` is how many rows (or tokens) the local loss averages over. A task with rows
    only on other ranks gets a leaf with the global value and no gradient path here, so that every
    rank hands the balancer the same tasks in the same order.
    """
    if not context.enabled:
        return losses
    device = next(iter(losses.values())).device
    local = torch.zeros(2, len(tasks), device=device, dtype=torch.float64)
    for i, task in enumerate(tasks):
        if task in losses:
            local[0, i] = losses[task].detach().double() * counts[task]
            local[1, i] = counts[task]
    dist.all_reduce(local)  # sums over ranks: loss x count, count
    totals = local[1].tolist()
    out: dict[str, torch.Tensor] = {}
    for i, task in enumerate(tasks):
        if totals[i] == 0:
            continue
        value = local[0, i] / totals[i]
        if task not in losses:
            out[task] = value.float().requires_grad_()
            continue
        # scaled so that averaging gradients over ranks weights each rank by its share of the rows
        share = torch.as_tensor(counts[task], device=device, dtype=torch.float64) * context.world_size / totals[i]
        scaled = losses[task] * share.to(losses[task].dtype)
        out[task] = scaled + (value.to(scaled.dtype) - scaled).detach()
    return out


def all_reduce_mean(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """``tensor`` averaged over ranks (returned; the input is left as it was)."""
    if not context.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out / context.world_size


def average_gradients(params: list[torch.nn.Parameter], context: DistContext) -> None:
    """Average ``.grad`` over ranks; a parameter without a gradient on every rank keeps none."""
    if not context.enabled or not params:
        return
    device = params[0].device
    has = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(has)
    live = []
    for param, count in zip(params, has.tolist()):
        if count == 0:
            param.grad = None
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        live.append(param)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for param in live:
        by_dtype.setdefault(param.grad.dtype, []).append(param)
    for group in by_dtype.values():
        grads = [p.grad for p in group]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= context.world_size
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)


def max_over_ranks(value: int, context: DistContext, device: torch.device) -> int:
    """The largest ``value`` over all ranks (the same answer on every rank)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], device=device, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_ranks_agree(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a stop request)."""
    return max_over_ranks(int(flag), context, device) > 0


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    """Leave the process group (at the end of a run)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def balanced_backward(model: torch.nn.Module, balancer: Balancer, scaler: torch.amp.GradScaler,
                      context: DistContext, balancer_name: str) -> BalancedBackward:
    """The backward pass ``balancer`` asks for, synchronised over ranks under data parallelism."""
    if not context.enabled:
        return BalancedBackward(model, balancer, scaler)
    if balancer.kind == "gradient" and balancer.on == "representation" and not balancer.inner_products_only:
        raise ConfigError(f"balancer.name={balancer_name} with balancer.on=representation cannot "
                          "be trained on several processes (it averages the gradient vectors themselves, "
                          "and each rank holds other samples); use balancer.on=params")
    return BalancedBackward(model, balancer, scaler,
                            reduce_task_grads=lambda grads: all_reduce_mean(grads, context),
                            # the mean of the ranks' Gram matrices is world_size x the global one,
                            # because each rank's gradients carry the factor world_size (global_losses)
                            reduce_gram=lambda gram: all_reduce_mean(gram, context) / context.world_size)
