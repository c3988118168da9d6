"""Data-parallel training on torch.distributed (launched by torchrun; gloo on CPU, NCCL on GPU).

Gradients are averaged across ranks *after* the balancer has formed the combined gradient, so
whatever a balancer does to per-task gradients, the update every rank applies is the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that logs, plots and writes checkpoints."""
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the process group that torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank), device


def broadcast_parameters(module: nn.Module, context: DistributedContext) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: list[nn.Parameter], context: DistributedContext) -> None:
    """All-reduce (mean) the gradients of ``parameters`` in one flat bucket."""
    if not context.enabled:
        return
    # a parameter may have no gradient on one rank (its task had no rows there) but one elsewhere:
    # agree on which parameters take part, so every rank reduces a bucket of the same layout
    has_grad = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8,
                            device=parameters[0].device if parameters else "cpu")
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    for param, flag in zip(parameters, has_grad.tolist()):
        if flag and param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
