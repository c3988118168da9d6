"""Turns a balancer's decision into gradients: one backward for loss weighting, per-task gradients otherwise.

Shared parameters are the encoders and the fusion; each head belongs to one task. For a
gradient balancer on an update step, each task's (scaled) loss is differentiated separately
with ``torch.autograd.grad(retain_graph=True)`` with respect to

- ``on: params``: the shared parameters (T backward passes through the trunk), or
- ``on: representation``: the fused outputs, cut from the trunk by ``MultiTaskModel.fuse``
  (T cheap passes through the heads, then a single backward through the trunk),

and to the task's own head. The per-task gradients are unscaled (GradScaler), rows that are not
finite are zeroed so they cannot poison the others, the balancer combines them, and the result
is written to ``.grad`` (scaled again, so that ``scaler.unscale_`` and its overflow check work as
for one loss; under an enabled scaler a non-finite row makes the written gradient infinite, so the
scaler skips the step and lowers the scale). Heads keep their own task's gradient.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from data_pipelines.batch import SHARED_OUTPUTS
from mmtl.balancing.base import Balancer, known_true, with_ridge
from mmtl.balancing.monitor import task_gradient_stats


def _flatten(grads: tuple[torch.Tensor | None, ...], like: list[torch.Tensor],
             out: torch.Tensor | None = None) -> torch.Tensor:
    pieces = [(g if g is not None else torch.zeros_like(t)).reshape(-1).float() for g, t in zip(grads, like)]
    return torch.cat(pieces, out=out) if out is not None else torch.cat(pieces)


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for tensor in like:
        out.append(flat[start:start + tensor.numel()].view_as(tensor).to(tensor.dtype))
        start += tensor.numel()
    return out


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """Rows (T, T) whose inner products are ``gram`` (T, T): ``R R^T = gram`` up to a relative ridge of
    1e-7, which keeps zero or parallel task gradients factorable. A Cholesky factor in float64 without
    its status check, so no host sync (an eigendecomposition would wait for the GPU)."""
    return torch.linalg.cholesky_ex(with_ridge(gram.double(), 1e-7))[0].float()


def finite_rows(grads: torch.Tensor) -> torch.Tensor:
    """(T,) bool: which rows of ``grads`` (T, D) hold neither a NaN nor an infinity. Each row times zero
    sums to 0, or to NaN when it has a non-finite entry: two passes over ``grads``, where
    ``isfinite(grads).all(1)`` takes about six on the CPU (and overflow cannot occur)."""
    return (grads * 0).sum(dim=1).isfinite()


def sanitize(grads: torch.Tensor, finite: torch.Tensor | None = None) -> torch.Tensor:
    """``grads`` (T, D) with every row that holds a NaN or an infinity replaced by zeros (no host sync);
    ``finite``: its :func:`finite_rows`, when known. ``grads`` itself when every row is known finite."""
    finite = finite_rows(grads) if finite is None else finite
    if known_true(finite.all()):
        return grads
    return torch.where(finite.unsqueeze(1), grads, 0.0)


class BalancedBackward:
    """Back-propagates per-task losses as ``balancer`` says, for ``model`` under ``scaler``."""

    def __init__(self, model: nn.Module, balancer: Balancer, scaler: torch.amp.GradScaler,
                 reduce_task_grads: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 reduce_gram: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Under data parallelism, ``reduce_task_grads`` averages per-task parameter gradients (T, D)
        over ranks, and ``reduce_gram`` turns one rank's Gram matrix of representation gradients into
        the global batch's; both are left out for a single process."""
        # per-task gradients by one vmapped backward instead of T (``balancer.batched_backward``)
        self.batched = balancer.config.batched_backward
        self.balancer, self.scaler = balancer, scaler
        self.reduce_task_grads = reduce_task_grads or (lambda grads: grads)
        self.reduce_gram = reduce_gram
        self.heads = {name: [p for p in head.parameters() if p.requires_grad] for name, head in model.heads.items()}
        # shared: every trainable parameter no single task's head owns (encoders, fusion, the norm on the
        # fusion's inputs, a decoder several generation tasks share)
        own = {id(p) for params in self.heads.values() for p in params}
        self.shared = [p for p in model.parameters() if p.requires_grad and id(p) not in own]

    def per_task_step(self, step: int) -> bool:
        """Whether step ``step`` computes per-task gradients for the balancer."""
        return self.balancer.kind == "gradient" and self.balancer.due(step)

    def new_cache(self, step: int) -> dict:
        """The model's fusion cache for this step (asks it to cut the representation when needed)."""
        if self.per_task_step(step) and self.balancer.on == "representation":
            return {SHARED_OUTPUTS: []}
        return {}

    def _grads(self, losses: dict[str, torch.Tensor], inputs: list[torch.Tensor], heads: bool,
               factor: float = 1.0) -> torch.Tensor:
        """Unscaled per-task gradients (T, D) on ``inputs``; with ``heads`` each head's gradient
        (times ``factor``) is added to its ``.grad``. One batched backward (``is_grads_batched``: the
        T vector-Jacobian products run as one vmapped pass) when ``batched``, else T passes."""
        owners = [task for task in losses for _ in (self.heads[task] if heads else [])]
        own = [p for task in losses for p in (self.heads[task] if heads else [])]
        if self.batched:
            scaled = torch.stack([self.scaler.scale(loss) for loss in losses.values()])
            eye = torch.eye(len(losses), device=scaled.device, dtype=scaled.dtype)
            grads = torch.autograd.grad(scaled, inputs + own, eye, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
            rows = torch.cat([(g.reshape(len(losses), -1) if g is not None
                               else torch.zeros(len(losses), t.numel(), device=scaled.device)).float()
                              for g, t in zip(grads[:len(inputs)], inputs)], dim=1)
            index = {task: i for i, task in enumerate(losses)}
            own_grads = [g[index[task]] if g is not None else None for g, task in zip(grads[len(inputs):], owners)]
        else:
            # each task's gradient is flattened straight into its row (no stack of T copies)
            rows = torch.empty(len(losses), sum(t.numel() for t in inputs), device=inputs[0].device)
            own_grads = []
            for row, (task, loss) in zip(rows, losses.items()):
                mine = self.heads[task] if heads else []
                grads = torch.autograd.grad(self.scaler.scale(loss), inputs + mine, retain_graph=True, allow_unused=True)
                _flatten(grads[:len(inputs)], inputs, out=row)
                own_grads.extend(grads[len(inputs):])
        for param, grad in zip(own, own_grads):
            if grad is not None:
                grad = grad * factor if factor != 1.0 else grad
                param.grad = grad if param.grad is None else param.grad + grad
        if not self.scaler.is_enabled():  # dividing by its scale of 1 would be a pass over (T, D) for nothing
            return rows
        return rows / self.scaler.scale(torch.ones((), device=rows.device))

    def __call__(self, losses: dict[str, torch.Tensor], cache: dict, step: int, monitor: bool,
                 factor: float = 1.0) -> dict[str, torch.Tensor]:
        """Back-propagate; returns the (detached) balanced total and, when ``monitor``, gradient statistics.

        Gradients are added to ``.grad`` (times ``factor``), so micro-batches accumulate.
        """
        if not self.per_task_step(step):
            return self._weighted_backward(losses, monitor, factor)
        pairs = cache.get(SHARED_OUTPUTS)
        inputs = [leaf for _, leaf in pairs] if pairs is not None else self.shared
        grads = self._grads(losses, inputs, heads=True, factor=factor)
        if pairs is None:
            grads = self.reduce_task_grads(grads)
        rows_finite = finite_rows(grads)
        finite = rows_finite.all()
        grads = sanitize(grads, rows_finite)
        ids, values = self.balancer.present(losses)
        combined = self._combine(grads, values, ids, finite, per_sample=pairs is not None)
        combined = self._as_written(combined, finite, factor)
        if pairs is None:
            for param, grad in zip(self.shared, _split(combined, self.shared)):
                param.grad = grad if param.grad is None else param.grad + grad
        else:
            outputs = [original for original, _ in pairs]
            if monitor:  # per-task gradients on the parameters: J^T g_t, one trunk pass each, log steps only
                grads = torch.stack([_flatten(torch.autograd.grad(
                    outputs, self.shared, _split(row, outputs), retain_graph=True, allow_unused=True), self.shared)
                    for row in grads])
            torch.autograd.backward(outputs, _split(combined, outputs))
        total = (self.balancer.weights[ids] * values).sum().detach()
        return {"total": total, **(task_gradient_stats(list(losses), grads) if monitor else {})}

    def _weighted_backward(self, losses: dict[str, torch.Tensor], monitor: bool,
                           factor: float) -> dict[str, torch.Tensor]:
        """A loss-weighting step: one backward of the balancer's scalar (per-task gradients only to monitor)."""
        with self.balancer.kept_unless(torch.stack([v.detach() for v in losses.values()]).isfinite().all()):
            total = self.balancer.combine(losses)
        stats = task_gradient_stats(list(losses), self._grads(losses, self.shared, heads=False)) if monitor else {}
        self.scaler.scale(total * factor if factor != 1.0 else total).backward()
        return {"total": total.detach(), **stats}

    def _combine(self, grads: torch.Tensor, values: torch.Tensor, ids: list[int], finite: torch.Tensor,
                 per_sample: bool) -> torch.Tensor:
        """The balancer's shared gradient from the finite per-task rows ``grads`` (T, D); ``finite``: whether
        every row was; ``per_sample``: the rows are gradients on this rank's representation."""
        if per_sample and self.reduce_gram is not None:
            # Representation gradients are per sample: ranks hold different rows of the global (T, D)
            # matrix, so they cannot be averaged. The balancers see them only through inner products,
            # so every rank balances stand-in rows with the global Gram matrix (the same decision on
            # every rank) and applies the resulting task weights to its own rows. A rank with a
            # non-finite gradient sends a NaN Gram matrix, so that every rank sees the step as bad.
            local = grads @ grads.T
            gram = self.reduce_gram(torch.where(finite, local, torch.full_like(local, float("nan"))))
            with self.balancer.kept_unless(gram.isfinite().all() & values.detach().isfinite().all()):
                self.balancer.update(gram_factor(gram.nan_to_num(0.0)), values, ids)
            return self.balancer.weights[ids].to(grads.dtype) @ grads
        with self.balancer.kept_unless(finite & values.detach().isfinite().all()):
            return self.balancer.update(grads, values, ids)

    def _as_written(self, combined: torch.Tensor, finite: torch.Tensor, factor: float) -> torch.Tensor:
        """The combined gradient as it is added to ``.grad``: scaled again under an enabled scaler, times ``factor``."""
        if self.scaler.is_enabled():
            # under fp16 an overflow in any task's gradient must reach .grad: it is the scaler's signal
            # to skip the step and lower the scale (zeroing the row would drop that task's gradient
            # at every step while the scale stayed too high)
            combined = torch.where(finite, combined, torch.full_like(combined, float("inf")))
            combined = combined * self.scaler.scale(torch.ones((), device=combined.device))
        return combined * factor if factor != 1.0 else combined
