"""The training loop. Everything task-specific lives in the tasks; everything else in its own module."""
from __future__ import annotations

import math
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from data_pipelines.loader import Batch, LoaderSettings, make_loader
from data_pipelines.mixing import training_sources
from mmtl.builder import Components, components_from_data
from mmtl.checkpoint import checkpoint_meta, resolve_checkpoint
from mmtl.config import ExperimentConfig, save_config
from mmtl.errors import MMTLError, TrainingInterrupted
from mmtl.precision import get_autocast, make_grad_scaler, resolve_device, resolve_precision
from mmtl.registry import BALANCERS
from mmtl.training.allocator import keep_freed_memory
from mmtl.training import distributed as dist
from mmtl.training import fsdp
from mmtl.training.acceleration import compile_blocks, enable_grad_checkpointing, peak_memory_gb
from mmtl.training.ema import WeightEMA
from mmtl.training.environment import save_environment
from mmtl.training.flops import peak_flops, step_flops
from mmtl.training.logging import RunLogger, finish_run
from mmtl.training.nonfinite import NonFiniteGuard
from mmtl.training.optim import build_optimizer, build_scheduler, clip_gradients, clip_groups
from mmtl.training.signals import GracefulStop
from mmtl.training.state import RunState
from mmtl.training.timer import StepTimer

OOM_ADVICE = ("out of GPU memory at step {step} (data.batch_size={batch}); try a smaller data.batch_size with "
              "train.grad_accum to keep the global batch, train.grad_checkpointing=true, or train.precision=bf16. "
              "Continue from the last checkpoint with --resume latest")


class StepCallback(Protocol):
    """Called by the loop on rank 0 after every step (validation implements it: mmtl.training.validation).
    Its state is saved with the run's; a ``stop_reason`` ends the run cleanly at the next step."""

    stop_reason: str | None

    def after_step(self, trainer: "Trainer", logger: RunLogger, progress: tqdm) -> None: ...

    def finish(self, log_path: Path) -> Any: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    checkpoint: Path
    components: Components
    final_losses: dict[str, float]
    seconds: float  # the whole run: setup, FLOP counting, checkpoints and plots included
    step_seconds: float  # the steps alone: data fetch, forward, backward and update
    step_cpu_seconds: float  # the same steps' CPU seconds of this process (loader workers not included)


class Trainer:
    """Owns the model, optimiser and bookkeeping of one run; ``run()`` trains to ``train.steps``.
    Under torchrun every rank builds the same Trainer; rank 0 alone writes logs and checkpoints."""

    def __init__(self, config: ExperimentConfig, resume: str | None = None, components: Components | None = None,
                 resume_command: str | None = None, validator: StepCallback | None = None) -> None:
        """``components``: a prepared model (e.g. by mmtl.finetuning) instead of one built from ``config``;
        only its parameters that require gradients are trained. ``resume_command``: what an interrupted
        run tells the user to run to continue (default: ``mmtl train ... --resume latest``).
        ``validator``: called after every step (see :class:`StepCallback`; None: no validation)."""
        self.config = config
        keep_freed_memory()  # no mmap/munmap and page faults for every large tensor of every step
        self.resume_command = resume_command or f"mmtl train --config {config.output_dir}/config.yaml --resume latest"
        self.run_dir = Path(config.output_dir)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.dist = dist.init_from_env(resolve_device(config.train.device).type)
        self.device = resolve_device(dist.local_device(config.train.device, self.dist))
        self.precision = resolve_precision(config.train.precision, self.device)
        self.components = components if components is not None else components_from_data(config)
        self.model = self.components.model.to(self.device)
        if self.precision == "pure_bf16":
            self.model.to(torch.bfloat16)
        if config.train.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        self.sharded = fsdp.shard_for_training(self.model, config.train, self.dist)  # before the optimiser
        self.task_names = [t.name for t in self.components.tasks]
        self.objectives = self.components.model.objectives()  # the tasks, then any auxiliary losses
        self.balancer = BALANCERS.get(config.balancer.name)(self.objectives, config.balancer).to(self.device)
        self.optimizer = build_optimizer([self.model, self.balancer], config.train, self.device)
        self.clip_groups = clip_groups(self.model, config.train.grad_clip_scope)
        self.scheduler = build_scheduler(self.optimizer, config.train)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.backward = dist.balanced_backward(self.model, self.balancer, self.scaler, self.dist, config.balancer.name)
        self.ema = WeightEMA(self.model, config.train.ema_decay) if config.train.ema_decay > 0 else None
        self.guard = NonFiniteGuard(config.train.max_nonfinite_steps)
        self.step = 0
        self.batches_consumed = 0  # the data position: micro-batches this rank has trained on
        self.flops_per_step: float | None = None
        self.validator = validator
        self.task_scale: dict[str, float] = {}  # loss factor per task before the balancer
        self.state = RunState(self.model, self.optimizer, self.sharded,
                              {"scheduler": self.scheduler, "scaler": self.scaler, "balancer": self.balancer},
                              {"nonfinite": self.guard, **({"validator": validator} if validator else {})}, self.ema)
        self.resumed = bool(resume)  # the run's trackers continue their runs (mmtl.training.trackers)
        if resume:
            self.resume(resume)
        else:
            self.state.start(self.run_dir, config.train.overwrite, self.dist, self.device)

    def resume(self, where: str) -> None:
        """Restore everything from a checkpoint directory, or this run's newest for ``latest``."""
        state = self.state.load(resolve_checkpoint(self.run_dir if where == "latest" else where))
        self.step, self.batches_consumed = int(state["step"]), int(state["data"]["batches"])

    def save(self) -> Path | None:
        """Write a resumable checkpoint of the current step (rank 0; other ranks wait and get None)."""
        path = self.state.save(self.run_dir, self.dist.is_main, self.config.train.keep_checkpoints,
                               checkpoint_meta(self.components, self.step), self.config,
                               {"step": self.step, "data": {"batches": self.batches_consumed}})
        dist.barrier(self.dist)
        return path

    def _loader(self) -> torch.utils.data.DataLoader:
        """This rank's training stream, continuing at the data position (exact on resume)."""
        settings = LoaderSettings.for_training(self.config, rank=self.dist.rank, world_size=self.dist.world_size,
                                               start_batch=self.batches_consumed)
        return make_loader(training_sources(self.config.data), self.config.data.train_split, self.components.tasks,
                           self.components.vocab, settings)

    def _logs_at(self, step: int) -> bool:
        """Whether the run logs after reaching ``step``: every ``train.log_every`` steps and the last."""
        return step % self.config.train.log_every == 0 or step == self.config.train.steps

    def _monitors_at(self, step: int) -> bool:
        """Per-task gradient statistics on this step: they cost a backward pass per task, and with one
        objective there is nothing to compare (its gradient norm is ``grad_norm``), so single-task runs skip them."""
        cfg = self.config.train
        return (len(self.objectives) > 1 and not self.sharded and self._logs_at(step) and cfg.monitor_every > 0
                and (step % cfg.monitor_every == 0 or step == cfg.steps))

    def _task_losses(self, batch: Batch, cache: dict) -> dict[str, torch.Tensor]:
        with get_autocast(self.precision, self.device):
            losses = self.model(batch, cache)
        if not self.dist.enabled:
            return losses
        counts: dict[str, torch.Tensor | int] = {name: len(batch) for name in losses}  # auxiliary losses: per row
        counts.update({t.name: t.loss_count(batch.targets[t.name]) for t in self.components.tasks if t.name in losses})
        return dist.global_losses(losses, counts, self.objectives, self.dist)

    def train_step(self, batch: Batch | Sequence[Batch], monitor: bool | None = None) -> dict[str, torch.Tensor]:
        """One optimiser step on ``batch`` (or on micro-batches whose gradients accumulate).

        Forward, balance and backward per micro-batch; then gradients are averaged over ranks,
        clipped, checked for NaN/inf (a bad step is skipped and counted) and applied. Returns the
        detached per-task losses (mean over micro-batches), the balanced total and ``grad_norm``.
        ``monitor`` (default: with several objectives, on log steps that are also ``train.monitor_every``
        steps, and the last) adds per-task gradient norms and cosines on the shared parameters.
        """
        micro = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        if not self.model.training:  # switching ~100 modules every step cost ~1 ms; eval() clears the flag
            self.model.train()
        if monitor is None:
            monitor = self._monitors_at(self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for index, part in enumerate(micro):
            cache = self.backward.new_cache(self.step)
            losses = self._task_losses(part, cache)
            scaled = {n: v * self.task_scale.get(n, 1.0) for n, v in losses.items()}  # validation.protect
            balanced = self.backward(scaled, cache, self.step, monitor and index == len(micro) - 1, factor=1.0 / len(micro))
            for name, value in {**losses, "total": balanced.pop("total")}.items():
                sums[name] = sums.get(name, 0) + value.detach() / len(micro)
        if self.dist.enabled:  # sharded parameters got averaged gradients from FSDP's reduce-scatter already
            params = [p for group in self.optimizer.param_groups for p in group["params"] if not fsdp.is_sharded(p)]
            dist.average_gradients(params, self.dist)
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.clip_groups, self.config.train.grad_clip, fsdp.full)
        task_losses = {name: value for name, value in sums.items() if name != "total"}
        applied = self.guard.allows(task_losses, grad_norm, self.step, scaler_handles_inf=self.scaler.is_enabled())
        if applied:
            self.scaler.step(self.optimizer)
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        with warnings.catch_warnings():
            if not applied:  # the schedule keeps counting skipped steps; torch warns when no update preceded it
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.step += 1
        return {**sums, **balanced, "grad_norm": grad_norm}

    def _next_step_batches(self, batches) -> list[Batch]:
        parts = [next(batches).to(self.device) for _ in range(self.config.train.grad_accum)]
        self.batches_consumed += len(parts)
        return parts

    def run(self) -> TrainResult:
        """Train until ``train.steps``; SIGTERM or Ctrl-C saves a checkpoint, then raises TrainingInterrupted."""
        cfg = self.config.train
        logger = self._open_run()
        progress = tqdm(total=cfg.steps, initial=self.step, desc="train",
                        disable=not (cfg.progress and logger is not None), dynamic_ncols=True)
        self.data_loader = self._loader()
        batches, timer, final = iter(self.data_loader), StepTimer(), {}
        with GracefulStop() as stop:
            try:
                while self.step < cfg.steps and not self._all_ranks_stop(stop):
                    final = self._run_step(batches, timer, logger, progress) or final
                if logger is not None and stop.requested is None:  # finished or stopped early: plots, verdicts
                    finish_run(logger, self.run_dir, self.task_names, self.validator)
            except KeyboardInterrupt:  # a Ctrl-C that arrived outside the handler (e.g. not the main thread)
                stop.requested = "SIGINT"
            finally:
                progress.close()
                if logger is not None:
                    logger.close(failed=stop.requested is not None or sys.exc_info()[0] is not None)
        checkpoint = self.save()
        dist.shutdown(self.dist)
        if stop.requested is not None:
            raise TrainingInterrupted(
                f"{stop.requested} at step {self.step}: checkpoint saved to {checkpoint}; continue with "
                f"`{self.resume_command}`", signal_name=stop.requested)
        return TrainResult(self.run_dir, checkpoint, self.components, final, timer.elapsed(), timer.stepping,
                           timer.stepping_cpu)

    def _open_run(self) -> RunLogger | None:
        """Rank 0 writes the run's config and environment and opens its logger; the other ranks log nothing."""
        if not self.dist.is_main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        save_environment(self.run_dir, self.device, self.dist.world_size)
        return RunLogger(self.run_dir, self.config.train.loggers, self.config, resume=self.resumed)

    def _all_ranks_stop(self, stop: GracefulStop) -> bool:
        """Whether the run stops now: every rank leaves the loop at the same step (a signal, or early stopping)."""
        stopping = self.validator is not None and self.validator.stop_reason is not None
        reason = dist.max_over_ranks(1 if stop.requested is not None else 2 if stopping else 0, self.dist, self.device)
        if reason == 1:
            stop.requested = stop.requested or "SIGTERM"
        return bool(reason)

    def _run_step(self, batches: Iterator[Batch], timer: StepTimer, logger: RunLogger | None,
                  progress: tqdm) -> dict[str, float] | None:
        """Fetch, train, log, validate and checkpoint one step; the logged losses on a log step of rank 0."""
        cfg = self.config.train
        timer.begin()
        parts = self._next_step_batches(batches)
        timer.waited(sum(len(p) for p in parts) * self.dist.world_size)
        if self.flops_per_step is None:
            with timer.aside():  # one-off setup, not step time
                self.flops_per_step = step_flops(self.model, parts[0], self.device) * cfg.grad_accum
                if cfg.compile:  # after counting: the FLOP counter cannot see inside compiled graphs
                    compile_blocks(self.model)
        try:
            out = self.train_step(parts)
        except torch.cuda.OutOfMemoryError:
            raise MMTLError(OOM_ADVICE.format(step=self.step + 1, batch=self.config.data.batch_size)) from None
        timer.stepped()
        progress.update(1)
        final = None
        if self._logs_at(self.step):
            throughput = timer.lap(self.flops_per_step or 0.0, peak_flops(self.device, self.precision)[0])
            if logger is not None:
                final = self._log(logger, progress, out, {**throughput, "gpu_memory_gb": peak_memory_gb(self.device)})
        if logger is not None and self.validator is not None:
            self.validator.after_step(self, logger, progress)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
            self.save()
        return final

    def _log(self, logger: RunLogger, progress: tqdm, out: dict[str, torch.Tensor],
             throughput: dict[str, float]) -> dict[str, float]:
        values = {name: float(value) for name, value in out.items()}
        stats = {name: values.pop(name) for name in [n for n in values if "/" in n]}  # gradient monitor
        record = {f"loss/{name}": value for name, value in values.items() if name not in ("grad_norm",)}
        record.update({f"weight/{t}": w for t, w in self.balancer.task_weights().items()})
        record.update(stats)
        record.update({"lr": self.scheduler.get_last_lr()[0], "grad_norm": values["grad_norm"],
                       "nonfinite_skipped": self.guard.skipped, **throughput})
        record.update(self.data_loader.corrupt.log_record())  # skipped corrupt samples so far
        logger.log(self.step, record)
        postfix = {n: f"{v:.3f}" for n, v in values.items() if n not in ("grad_norm", "total")}
        progress.set_postfix({**postfix, "samples/s": f"{throughput['samples_per_s']:.0f}"}, refresh=False)
        return {name: value for name, value in values.items() if name != "grad_norm" and math.isfinite(value)}

