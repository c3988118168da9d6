"""The balancer interface: loss weighting (one backward) and gradient combination (per-task gradients).

Two kinds share one base class:

- loss-weighting balancers (``kind = "loss"``) turn per-task losses into one scalar that the
  trainer back-propagates once;
- gradient balancers (``kind = "gradient"``) receive the per-task gradients ``G`` (T, D) on the
  shared parameters or on the shared representation (``balancer.on``) and return one shared
  gradient; on steps where they do not update (``balancer.update_every``) they act as a
  loss-weighting balancer with their last effective weights.

State (learned weights, running averages) lives in parameters and buffers, so it travels in
``state_dict`` and therefore in checkpoints. Nothing in ``combine`` reads a value back to the host.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from mmtl.balancing.solvers import safe_divide, scaled_gram
from mmtl.config import BalancerConfig, NoSettings, Range, settings_of
from mmtl.config import setting as config_setting


def setting(default: Any, low: float, high: float = float("inf")) -> Any:
    """A numeric setting of a balancer with its valid range [low, high] (checked with the config)."""
    return config_setting(default, range=Range(low, None if math.isinf(high) else high))


def known_true(flag: torch.Tensor) -> bool:
    """Whether the boolean tensor ``flag`` is known to hold without waiting for a device: True only for a
    true flag in host memory (reading it there costs nothing); an accelerator's flag stays a tensor."""
    return flag.device.type == "cpu" and bool(flag)


class Balancer(nn.Module):
    """Combines per-task losses into the scalar that is back-propagated.

    A balancer is an nn.Module so that learned weights are trained with the model and its
    state travels in checkpoints through ``state_dict``.
    """

    kind: ClassVar[str] = "loss"
    # the method's own settings (keys of the ``balancer`` section beside ``name``, e.g. ``balancer.c``):
    # a dataclass, validated with the config
    Settings: ClassVar[type] = NoSettings

    def __init__(self, tasks: list[str], config: BalancerConfig) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.config = config
        self.settings = settings_of(config, type(self), "balancer")
        self.index = {task: i for i, task in enumerate(self.tasks)}
        # effective weight of every task as last used (for logging and, in gradient balancers,
        # for the steps between two gradient updates)
        self.register_buffer("weights", torch.ones(len(self.tasks)))
        # the balancer's own random stream (task orders, random weights): seeded from the run's seed
        # (the trainer seeds torch first) and advanced only by the balancer, so that every rank of a
        # data-parallel run draws the same numbers whatever its dropout consumed; saved in checkpoints
        self.generator = torch.Generator().manual_seed(torch.initial_seed())

    def random_order(self, n: int) -> list[int]:
        """A random permutation of ``range(n)`` from the balancer's own generator (on the CPU: no sync)."""
        return torch.randperm(n, generator=self.generator).tolist()

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def present(self, losses: dict[str, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
        """Indices of the tasks in ``losses`` (batch order) and their losses stacked in fp32."""
        ids = [self.index[task] for task in losses]
        return ids, torch.stack([loss.float() for loss in losses.values()])

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """One scalar from the losses of the tasks present in this batch (default: current weights)."""
        ids, values = self.present(losses)
        return (self.weights[ids].to(values.dtype) * values).sum()

    @contextmanager
    def kept_unless(self, finite: torch.Tensor) -> Iterator[None]:
        """Whatever the block changes in the balancer's buffers is undone unless ``finite`` (a bool tensor)
        holds: a step the non-finite guard will skip leaves the state as it was (tensor ops, no sync).
        The random generator still advances (only its position, never its quality, is affected)."""
        if known_true(finite):  # nothing to undo: no copy of the state (which may be (T, D) vectors)
            yield
            return
        saved = {name: buffer.clone() for name, buffer in self.named_buffers()}
        yield
        with torch.no_grad():
            for name, buffer in self.named_buffers():
                before = saved.get(name)
                if before is None or before.shape != buffer.shape:  # created by this step: reset
                    before = torch.zeros_like(buffer)
                buffer.copy_(torch.where(finite.to(buffer.device), buffer, before))

    def task_weights(self) -> dict[str, float]:
        """Current effective weight of each task (for logging; syncs with the device)."""
        return dict(zip(self.tasks, self.weights.detach().float().cpu().tolist()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # some buffers (running gradient averages) take their shape from the first step: adopt the
        # saved shape so that a resumed run restores them instead of failing on a size mismatch
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buffer is not None and saved is not None and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buffer.dtype, device=buffer.device)
        if prefix + "_extra_state" not in state_dict:  # a checkpoint from before the balancer had a generator
            state_dict = {**state_dict, prefix + "_extra_state": self.get_extra_state()}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GradientBalancer(Balancer):
    """Combines per-task gradients ``G`` (T, D) into one shared gradient (D,).

    Subclasses implement :meth:`combine_gradients`. After each update the effective weights
    ``w`` with ``G^T w ~ d`` (least squares, exact when ``d`` lies in the span of the task
    gradients, as it does for every method here) are stored in ``weights``; steps between
    updates (``update_every > 1``) back-propagate ``sum_t w_t L_t`` once.
    """

    kind: ClassVar[str] = "gradient"
    # the space the per-task gradients live in; None follows ``balancer.on``
    space: ClassVar[str | None] = None
    # whether the result depends on G only through inner products and linear combinations of its
    # rows; data-parallel training on the representation needs this (mmtl.balancing.backward)
    inner_products_only: ClassVar[bool] = True

    @property
    def on(self) -> str:
        """``params`` (all shared parameters) or ``representation`` (the fused outputs)."""
        return self.space or self.config.on

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based, before the update) computes per-task gradients."""
        return step % max(1, self.config.update_every) == 0

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Shared gradient (D,) from per-task gradients ``grads`` (T, D) of tasks ``ids`` with ``losses`` (T,).

        The default: the rows weighted by :meth:`weights_from_gram`."""
        return self.weights_from_gram(grads, losses, ids).to(grads.dtype) @ grads

    def weights_from_gram(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Task weights (T,) of :meth:`gram_weights` on the normalized Gram matrix of ``grads``, rescaled."""
        gram, scale = scaled_gram(grads)
        return self.rescale(self.gram_weights(gram, losses, ids), scale)

    def rescale(self, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Weights for the raw Gram matrix ``scale`` x M from those for M (identity for scale-free methods)."""
        return weights

    def gram_weights(self, gram: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Task weights (T,) from the Gram matrix of the task gradients divided by its largest diagonal
        entry (float64); the balancers that need only inner products implement this."""
        raise NotImplementedError

    def update(self, grads: torch.Tensor, losses: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """The combined gradient of the tasks ``ids``, computed in fp32; records their effective weights.

        Gram balancers record their exact weights; the others the least-squares weights that
        reproduce their combined gradient."""
        grads, losses = grads.float(), losses.float().detach()
        with torch.autocast(grads.device.type, enabled=False):  # fp32 solvers even if called under autocast
            if type(self).gram_weights is not GradientBalancer.gram_weights:  # a Gram balancer: exact weights
                weights = self.weights_from_gram(grads, losses, ids).float()
                self.weights[ids] = weights.to(self.weights.dtype)
                return weights @ grads
            combined = self.combine_gradients(grads, losses, ids)
            self.weights[ids] = effective_weights(grads, combined).to(self.weights.dtype)
        return combined


def with_ridge(gram: torch.Tensor, relative: float) -> torch.Tensor:
    """``gram`` plus ``relative`` x its mean diagonal on the diagonal (keeps a rank-deficient Gram matrix solvable)."""
    ridge = relative * gram.diagonal().mean().clamp_min(1e-30)
    return gram + ridge * torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)


def effective_weights(grads: torch.Tensor, combined: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares ``w`` with ``grads^T w = combined``, from the float64 pseudo-inverse
    of the normalized Gram matrix (finite for zero, identical or opposite rows; no copy of ``grads``)."""
    gram, scale = scaled_gram(grads)
    projections = safe_divide((grads @ combined).double(), scale)
    return (torch.linalg.pinv(gram, rtol=1e-12, hermitian=True) @ projections).to(grads.dtype)
