"""The training loop. Everything task-specific lives in the tasks; everything else in its own module."""
from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data_pipelines.loader import make_loader
from mmtl.balancing.backward import BalancedBackward
from mmtl.builder import Components, components_from_data
from mmtl.config import ExperimentConfig, save_config
from mmtl.errors import MMTLError, TrainingInterrupted
from mmtl.registry import BALANCERS
from mmtl.training.checkpoint import (
    load_train_state, load_weights, resolve_checkpoint, rng_state, save_run_checkpoint, set_rng_state,
)
from mmtl.training.logging import RunLogger, plot_losses, plot_task_monitor
from mmtl.training.optim import build_optimizer, build_scheduler
from mmtl.training.signals import GracefulStop
from mmtl.training.precision import get_autocast, make_grad_scaler, resolve_device, resolve_precision


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    checkpoint: Path
    components: Components
    final_losses: dict[str, float]
    seconds: float


class Trainer:
    """Owns the model, optimiser and bookkeeping of one run; ``run()`` trains to ``train.steps``."""

    def __init__(self, config: ExperimentConfig, resume: str | None = None) -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.device = resolve_device(config.train.device)
        self.precision = resolve_precision(config.train.precision, self.device)
        self.components = components_from_data(config)
        self.model = self.components.model.to(self.device)
        self.balancer = BALANCERS.get(config.balancer.name)(config.tasks, config.balancer).to(self.device)
        self.optimizer = build_optimizer([self.model, self.balancer], config.train, self.device)
        self.scheduler = build_scheduler(self.optimizer, config.train)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.backward = BalancedBackward(self.model, self.balancer, self.scaler)
        self.step = 0
        if resume:
            self._resume(resume)
        else:
            self._claim_run_dir()

    def _claim_run_dir(self) -> None:
        """A fresh run must not silently mix its log and checkpoints with an earlier run's."""
        previous = [self.run_dir / "log.jsonl", self.run_dir / "checkpoints"]
        if not any(p.exists() for p in previous):
            return
        if not self.config.train.overwrite:
            raise MMTLError(f"{self.run_dir} already holds a run; continue it with --resume latest, "
                            "or start over with train.overwrite=true (deletes its log and checkpoints)")
        for path in previous + [self.run_dir / "tensorboard"]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _resume(self, where: str) -> None:
        checkpoint = resolve_checkpoint(self.run_dir if where == "latest" else where)
        load_weights(self.model, checkpoint)
        state = load_train_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def save(self) -> Path:
        """Write a resumable checkpoint of the current step."""
        train_state = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "balancer": self.balancer.state_dict(),
            "rng": rng_state(), "step": self.step,
        }
        return save_run_checkpoint(
            self.run_dir, self.step, model=self.model, meta=self.components.meta(self.step),
            config=self.config, train_state=train_state,
        )

    def _loader(self) -> torch.utils.data.DataLoader:
        data, model = self.config.data, self.config.model
        return make_loader(
            data.path, data.train_split, tasks=self.components.tasks, vocab=self.components.vocab,
            image_size=model.image.image_size, context_length=model.text.context_length,
            batch_size=data.batch_size, train=True, num_workers=data.num_workers,
            shuffle_buffer=data.shuffle_buffer, seed=self.config.seed + self.step,
            max_corrupt_fraction=data.max_corrupt_fraction, max_image_pixels=data.max_image_pixels,
        )

    def _logs_at(self, step: int) -> bool:
        """Whether the run logs after reaching ``step``: every ``train.log_every`` steps and the last."""
        return step % self.config.train.log_every == 0 or step == self.config.train.steps

    def train_step(self, batch, monitor: bool | None = None) -> dict[str, torch.Tensor]:
        """Forward, balance, backward and update on one batch; returns detached per-task losses.

        ``monitor`` (default: on log steps that are also ``train.monitor_every`` steps, and the last)
        adds per-task gradient norms and cosines on the shared parameters.
        """
        self.model.train()
        if monitor is None:
            cfg, next_step = self.config.train, self.step + 1
            monitor = self._logs_at(next_step) and cfg.monitor_every > 0 and (
                next_step % cfg.monitor_every == 0 or next_step == cfg.steps)
        cache = self.backward.new_cache(self.step)
        with get_autocast(self.precision, self.device):
            losses = self.model(batch, cache)
        self.optimizer.zero_grad(set_to_none=True)
        balanced = self.backward(losses, cache, self.step, monitor)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {**{k: v.detach() for k, v in losses.items()}, **balanced, "grad_norm": grad_norm}

    def run(self) -> TrainResult:
        """Train until ``train.steps``; SIGTERM or Ctrl-C saves a checkpoint, then raises TrainingInterrupted."""
        cfg = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        logger = RunLogger(self.run_dir)
        progress = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not cfg.progress, dynamic_ncols=True)
        self.data_loader = self._loader()
        batches = iter(self.data_loader)
        started, last_log, data_wait, samples = time.perf_counter(), time.perf_counter(), 0.0, 0
        final: dict[str, float] = {}
        with GracefulStop() as stop:
            try:
                while self.step < cfg.steps and stop.requested is None:
                    fetch = time.perf_counter()
                    batch = next(batches).to(self.device)
                    data_wait += time.perf_counter() - fetch
                    samples += len(batch)
                    out = self.train_step(batch)
                    progress.update(1)
                    if self._logs_at(self.step):
                        now = time.perf_counter()
                        final = self._log(logger, progress, out, samples / (now - last_log), data_wait / (now - last_log))
                        last_log, data_wait, samples = now, 0.0, 0
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self.save()
            except KeyboardInterrupt:  # a Ctrl-C that arrived outside the handler (e.g. not the main thread)
                stop.requested = "SIGINT"
            finally:
                progress.close()
                logger.close()
        checkpoint = self.save()
        if stop.requested is not None:
            raise TrainingInterrupted(
                f"{stop.requested} at step {self.step}: checkpoint saved to {checkpoint}; continue with "
                f"`mmtl train --config {self.run_dir}/config.yaml --resume latest`", signal_name=stop.requested)
        plot_losses(logger.path, self.run_dir, [t.name for t in self.components.tasks])
        plot_task_monitor(logger.path, self.run_dir)
        return TrainResult(self.run_dir, checkpoint, self.components, final, time.perf_counter() - started)

    def _log(self, logger: RunLogger, progress: tqdm, out: dict[str, torch.Tensor],
             samples_per_s: float, data_wait_fraction: float) -> dict[str, float]:
        values = {name: float(value) for name, value in out.items()}
        stats = {name: values.pop(name) for name in [n for n in values if "/" in n]}  # gradient monitor
        bad = [name for name, value in values.items() if not math.isfinite(value) and name != "grad_norm"]
        if bad:
            raise MMTLError(f"loss became non-finite at step {self.step} for: {', '.join(bad)} "
                            "(try a lower train.lr or train.precision=fp32)")
        record = {f"loss/{name}": value for name, value in values.items() if name not in ("grad_norm",)}
        record.update({f"weight/{t}": w for t, w in self.balancer.task_weights().items()})
        record.update(stats)
        record.update({"lr": self.scheduler.get_last_lr()[0], "grad_norm": values["grad_norm"],
                       "samples_per_s": samples_per_s, "data_wait_fraction": data_wait_fraction})
        record.update(self.data_loader.corrupt.log_record())  # skipped corrupt samples so far
        logger.log(self.step, record)
        progress.set_postfix({n: f"{v:.3f}" for n, v in values.items() if n not in ("grad_norm", "total")}, refresh=False)
        return {name: value for name, value in values.items() if name != "grad_norm"}


def train(config: ExperimentConfig, resume: str | None = None) -> TrainResult:
    """Train a model as ``config`` says (optionally resuming) and return the result."""
    return Trainer(config, resume).run()
