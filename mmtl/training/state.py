"""A run's resumable state in one place: weights (sharded or plain), optimiser, the other stateful
parts, counters and RNG, saved to and restored from the run's checkpoints."""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
from torch import nn

from mmtl.checkpoint import EMA_FILE, MODEL_FILE, load_train_state, load_weights, save_run_checkpoint
from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.training import distributed as dist
from mmtl.training import fsdp
from mmtl.training.ema import WeightEMA


def rng_state() -> dict[str, Any]:
    """Every RNG the run uses."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class Stateful(Protocol):
    """Anything whose state a checkpoint keeps (schedulers, scalers, balancers, callbacks...)."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@dataclass
class RunState:
    """What a run saves and resumes. ``required`` parts must fit the checkpoint (a run with other
    settings is refused); ``optional`` ones are restored when the checkpoint holds them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sharded: bool
    required: dict[str, Stateful]
    optional: dict[str, Stateful] = field(default_factory=dict)
    ema: WeightEMA | None = None

    def save(self, run_dir: Path, main: bool, keep: int, meta: dict[str, Any], config: ExperimentConfig,
             counters: dict[str, Any]) -> Path | None:
        """Write ``checkpoints/step-N`` (``counters`` holds ``step``); sharded: a collective, rank 0 writes."""
        if self.sharded:  # every rank gathers, rank 0 keeps the full tensors
            weights: nn.Module = fsdp.StateDictModule(fsdp.gather_model_state(self.model, main))
            optimizer = fsdp.gather_optimizer_state(self.optimizer, main)
        else:
            weights, optimizer = self.model, self.optimizer.state_dict() if main else {}
        if not main:
            return None
        parts = {**self.required, **self.optional}
        train_state = {"optimizer": optimizer, **{name: part.state_dict() for name, part in parts.items()},
                       "rng": rng_state(), **counters, "ema_updates": self.ema.updates if self.ema is not None else 0}
        return save_run_checkpoint(run_dir, counters["step"], keep=keep, model=weights, meta=meta, config=config,
                                   train_state=train_state, ema=self.ema.module if self.ema is not None else None)

    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore everything from ``checkpoint``; returns its training state (for the counters)."""
        if self.sharded:
            fsdp.load_model_state(self.model, checkpoint / MODEL_FILE)
        else:
            load_weights(self.model, checkpoint)
        state = load_train_state(checkpoint)
        try:
            if self.sharded:
                fsdp.load_optimizer_state(self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            for name, part in self.required.items():
                part.load_state_dict(state[name])
        except (ValueError, KeyError, RuntimeError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MMTLError(f"{checkpoint} was saved by a run with other settings (optimiser or balancer state "
                            f"does not fit: {first_line}); resume with the settings it was started with, "
                            f"e.g. --config {checkpoint}/config.yaml") from None
        for name, part in self.optional.items():
            if name in state:
                part.load_state_dict(state[name])
        if self.ema is not None:
            if not (checkpoint / EMA_FILE).is_file():
                raise MMTLError(f"train.ema_decay is set but {checkpoint} has no {EMA_FILE} to resume the average from")
            load_weights(self.ema.module, checkpoint, EMA_FILE)
            self.ema.updates = int(state.get("ema_updates", 0))
        set_rng_state(state["rng"])
        return state

    def start(self, run_dir: Path, overwrite: bool, context: dist.DistContext, device: torch.device) -> None:
        """A fresh run: rank 0 claims ``run_dir`` (every rank stops when it refuses); under data
        parallelism every rank takes rank 0's initial weights."""
        refusal = None
        if context.is_main:
            try:
                claim_run_dir(run_dir, overwrite)
            except MMTLError as exc:
                refusal = exc
        if dist.all_ranks_agree(refusal is not None, context, device):  # no rank may wait for ever
            raise refusal or MMTLError(f"rank 0 refused to start a run in {run_dir}")
        if context.enabled and not self.sharded:  # sharded: broadcast before sharding
            dist.broadcast_module(self.model)
            if self.ema is not None:
                self.ema.averaged.module.load_state_dict(self.model.state_dict())


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A fresh run must not silently mix its log and checkpoints with an earlier run's."""
    previous = [run_dir / "log.jsonl", run_dir / "checkpoints"]
    if not any(p.exists() for p in previous):
        return
    if not overwrite:
        raise MMTLError(f"{run_dir} already holds a run; continue it with --resume latest, "
                        "or start over with train.overwrite=true (deletes its log and checkpoints)")
    for path in previous + [run_dir / "tensorboard"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
