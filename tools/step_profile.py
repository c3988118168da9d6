"""Where one training step's time goes (tools/bench_recipe.py --profile): mmtl's step cut into its parts.

A :class:`PartClock` tiles the step's wall time: each ``mark(part)`` charges the time since the previous
mark to ``part`` (waiting for the device first on CUDA, so a part's time is its own). ``ProfiledTrainer``
is the ordinary :class:`mmtl.training.loop.Trainer` with marks at the boundaries of its step: the data
fetch, the move to the device, module hooks around each encoder, the fusion and each head, the balanced
backward, the optimiser's step hooks, and the end of ``train_step``. Parts of mmtl's step:

  data         next batch from the shard stream: read, decode, per-task targets, collate
  to_device    Batch.to(device) (host -> device; on a CPU only the batch's reassembly)
  prepare      zero_grad, training mode, the forward cache
  encode:NAME  the encoder of modality NAME
  fuse         the fusion trunk
  glue         the forward between those modules (input norm, row selection, extension hooks)
  head         each task's head
  loss         the loss after the head (cross-entropy, ...), the per-task loss scaling
  backward     the balancer and autograd's backward pass
  clip_check   unscaling, gradient clipping and the non-finite check (the step's one host sync)
  optimizer    the optimiser's step
  schedule     gradient scaler update, learning-rate schedule, EMA
  bookkeeping  what the loop does between steps: progress bar, logs, validation, checkpoints

``data`` to ``schedule`` are what ``TrainResult.step_seconds`` measures; ``bookkeeping`` is outside it.
With an ``interlude`` (bench_recipe: one reference step) the two sides' steps alternate, so that
both meet the same load on a shared machine. The first steps are reported apart (``first_steps_seconds``):
they fill the shuffle buffer, decode the first epoch and warm the allocator. FLOP counting is skipped (MFU is not logged) and ``train.compile`` is not applied.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from data_pipelines.loader import Batch
from data_pipelines.pipes import allow_pipes
from mmtl.config import ExperimentConfig
from mmtl.training.loop import Trainer, TrainResult
from mmtl.training.validation import Validator

STEP_PARTS = ("data", "to_device", "prepare", "glue", "fuse", "head", "loss", "backward", "clip_check",
              "optimizer", "schedule")  # plus one encode:NAME per encoder that ran
OUTSIDE_STEP = ("bookkeeping",)


class PartClock:
    """Charges the wall time between consecutive marks to named parts, step by step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self.last: float | None = None  # None: not started (the first mark starts the clock)

    def now(self) -> float:
        """Wall time after the device finished the work queued so far."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def new_step(self) -> None:
        """A step begins: marks from here on are charged to it."""
        if self.last is not None:
            self.mark("bookkeeping")  # the loop's own work since the previous step ended
        else:
            self.last = self.now()
        self.steps.append(defaultdict(float))

    def skip(self) -> None:
        """Charge the time since the previous mark to nothing (work that belongs to neither side's step)."""
        self.last = self.now()

    def pause(self) -> None:
        """Stop the clock until the next step begins (time spent elsewhere is charged to nothing)."""
        self.last = None

    def mark(self, part: str) -> None:
        """Charge the time since the previous mark to ``part`` of the current step."""
        now = self.now()
        if self.last is not None and self.steps:
            self.steps[-1][part] += now - self.last
        self.last = now

    def hook(self, module: torch.nn.Module, before: str, after: str) -> None:
        """Mark ``before`` when ``module``'s forward starts and ``after`` when it returns."""
        module.register_forward_pre_hook(lambda *_: self.mark(before))
        module.register_forward_hook(lambda *_: self.mark(after))


class TimedBackward:
    """The trainer's balanced backward, marked: what precedes it is ``loss``, what it does ``backward``."""

    def __init__(self, inner: Any, clock: PartClock) -> None:
        self.inner, self.clock = inner, clock

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        self.clock.mark("loss")
        out = self.inner(*args, **kwargs)
        self.clock.mark("backward")
        return out

    def __getattr__(self, name: str) -> Any:  # new_cache, shared, ... as the trainer reads them
        return getattr(self.inner, name)


class ProfiledTrainer(Trainer):
    """A :class:`Trainer` whose steps are cut into the parts listed in this module's docstring."""

    def __init__(self, config: ExperimentConfig, validator: Validator | None = None,
                 interlude: Callable[[], None] | None = None) -> None:
        """``interlude``: run after every step, outside the step and its bookkeeping (one step of the
        reference, so that both sides' steps alternate and meet the same load on the machine)."""
        super().__init__(config, validator=validator)
        self.interlude = interlude
        self.clock = PartClock(self.device)
        self.flops_per_step = 0.0  # no FLOP count: it runs the model once more, under the hooks
        model = self.model
        model.register_forward_pre_hook(lambda *_: self.clock.mark("prepare"))
        model.register_forward_hook(lambda *_: self.clock.mark("loss"))
        for name, encoder in model.encoders.items():
            self.clock.hook(encoder, "glue", f"encode:{name}")
        self.clock.hook(model.fusion, "glue", "fuse")
        for head in model.heads.values():
            self.clock.hook(head, "glue", "head")
        self.backward = TimedBackward(self.backward, self.clock)
        self.optimizer.register_step_pre_hook(lambda *_: self.clock.mark("clip_check"))
        self.optimizer.register_step_post_hook(lambda *_: self.clock.mark("optimizer"))

    def _next_step_batches(self, batches) -> list[Batch]:
        self.clock.new_step()
        parts = []
        for _ in range(self.config.train.grad_accum):
            batch = next(batches)
            self.clock.mark("data")
            parts.append(batch.to(self.device))
            self.clock.mark("to_device")
        self.batches_consumed += len(parts)
        return parts

    def _run_step(self, *args: Any) -> dict[str, float] | None:
        out = super()._run_step(*args)
        if self.interlude is not None:
            self.clock.mark("bookkeeping")
            self.interlude()
            self.clock.skip()
        return out

    def train_step(self, batch: Batch | Sequence[Batch], monitor: bool | None = None) -> dict[str, torch.Tensor]:
        self.clock.mark("to_device")
        out = super().train_step(batch, monitor)
        self.clock.mark("schedule")
        return out


def summarize_parts(steps: list[dict[str, float]], skip: int) -> dict[str, Any]:
    """Mean milliseconds per step of each part over the steps after the first ``skip``, their sum
    (``step_ms``, without bookkeeping) and the seconds of the first ``skip`` steps."""
    kept = steps[skip:] or steps
    names = sorted({name for step in kept for name in step}, key=_part_order)
    parts = {name: round(1000 * sum(step.get(name, 0.0) for step in kept) / len(kept), 3) for name in names}
    step_ms = sum(v for k, v in parts.items() if k not in OUTSIDE_STEP)
    first = sum(v for step in steps[:skip] for k, v in step.items() if k not in OUTSIDE_STEP)
    return {"parts_ms": parts, "step_ms": round(step_ms, 3), "steps": len(kept), "first_steps": min(skip, len(steps)),
            "first_steps_seconds": round(first, 3)}


def _part_order(name: str) -> tuple[int, str]:
    order = [*STEP_PARTS[:3], "encode", *STEP_PARTS[3:], *OUTSIDE_STEP]
    return order.index(name.split(":")[0]) if name.split(":")[0] in order else len(order), name


def profile_mmtl(config: ExperimentConfig, skip: int,
                 interlude: Callable[[], None] | None = None) -> tuple[dict[str, Any], TrainResult]:
    """Train ``config`` (its ``train.steps``) under the profile, running ``interlude`` between steps; the
    part summary and the run's result. The summary's ``measured_step_ms`` is ``TrainResult.step_seconds``
    per step over all steps, and ``all_steps_ms`` the parts' sum over all steps, per step: the two agree
    when the parts tile the step."""
    allow_pipes(config.data.allow_pipe)  # as mmtl.training.run.make_trainer does
    trainer = ProfiledTrainer(config, Validator(config, Path(config.output_dir)), interlude)
    result = trainer.run()
    steps = trainer.clock.steps
    summary = summarize_parts(steps, skip)
    inside = sum(v for step in steps for k, v in step.items() if k not in OUTSIDE_STEP)
    summary["all_steps_ms"] = round(1000 * inside / max(1, len(steps)), 3)
    summary["measured_step_ms"] = round(1000 * result.step_seconds / max(1, len(steps)), 3)
    return summary, result


# what each side's parts add up to in the comparison (the reference's forward is one part)
GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("data",), "to_device": ("to_device",), "forward": ("encode", "glue", "fuse", "head", "forward"),
    "loss": ("loss",), "backward": ("prepare", "backward"), "clip_check": ("clip_check",),
    "optimizer": ("optimizer",), "schedule": ("schedule",), "bookkeeping": ("bookkeeping",),
}


def grouped(parts_ms: dict[str, float]) -> dict[str, float]:
    """``parts_ms`` summed into :data:`GROUPS` (an ``encode:NAME`` part counts as ``encode``)."""
    return {group: round(sum(v for k, v in parts_ms.items() if k.split(":")[0] in names), 3)
            for group, names in GROUPS.items()}


def compare_profiles(mmtl: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Both sides' parts, grouped, with mmtl's excess per group and the step-time ratio."""
    ours, theirs = grouped(mmtl["parts_ms"]), grouped(reference["parts_ms"])
    return {"step_ratio": round(mmtl["step_ms"] / reference["step_ms"], 4) if reference["step_ms"] else None,
            "groups_ms": {g: {"mmtl": ours[g], "reference": theirs[g], "excess": round(ours[g] - theirs[g], 3)}
                          for g in GROUPS},
            "mmtl": mmtl, "reference": reference}


def format_profile(name: str, comparison: dict[str, Any]) -> str:
    """A plain-text table of one comparison: ms per step of each group, mmtl's parts in detail."""
    mmtl, ref = comparison["mmtl"], comparison["reference"]
    lines = [f"step profile {name}: mmtl {mmtl['step_ms']:.1f} ms/step, reference {ref['step_ms']:.1f} ms/step "
             f"(ratio {comparison['step_ratio']}; mean of {mmtl['steps']} steps after the first "
             f"{mmtl['first_steps']}, which took mmtl {mmtl['first_steps_seconds']:.2f}s and the reference "
             f"{ref['first_steps_seconds']:.2f}s; bookkeeping is outside the step)",
             f"  {'part':<12}{'mmtl ms':>10}{'ref ms':>10}{'excess':>10}"]
    for group, row in comparison["groups_ms"].items():
        lines.append(f"  {group:<12}{row['mmtl']:>10.2f}{row['reference']:>10.2f}{row['excess']:>10.2f}")
    detail = ", ".join(f"{k} {v:.2f}" for k, v in mmtl["parts_ms"].items())
    lines.append(f"  mmtl parts (ms): {detail}")
    lines.append(f"  reference data: {ref['parts_ms'].get('data', 0.0):.2f} ms/batch from memory, "
                 f"{ref['shard_read_ms']:.2f} ms/batch read and decoded from the shards")
    return "\n".join(lines)
