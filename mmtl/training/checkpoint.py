"""Checkpoints: written atomically, loaded without unpickling arbitrary code.

Layout of a checkpoint directory (what ``Predictor.from_pretrained`` and ``--resume`` read):
    model.safetensors   model weights
    ema.safetensors     moving average of the weights (with train.ema_decay > 0); inference prefers it
    meta.json           tasks, class list, vocabulary, step, parameter counts
    config.yaml         the resolved experiment config
    train_state.pt      optimiser, scheduler, scaler, balancer, RNG (tensors and plain types only)
A run keeps ``RUN/checkpoints/step-NNNNNNNN/`` directories and a ``LATEST`` file naming the newest.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mmtl.config import ExperimentConfig, save_config
from mmtl.errors import MMTLError

MODEL_FILE, META_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "meta.json", "config.yaml", "train_state.pt"
EMA_FILE = "ema.safetensors"
LATEST = "LATEST"


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


def write_checkpoint(
    directory: Path, model: torch.nn.Module, meta: dict[str, Any], config: ExperimentConfig,
    train_state: dict[str, Any] | None = None, ema: torch.nn.Module | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory`` atomically (temp dir, then rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(model, str(tmp / MODEL_FILE))
        if ema is not None:
            save_model(ema, str(tmp / EMA_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        save_config(config, tmp / CONFIG_FILE)
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_run_checkpoint(run_dir: Path, step: int, keep: int = 3, **kwargs: Any) -> Path:
    """Write ``checkpoints/step-N``, point ``LATEST`` at it atomically, keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    path = write_checkpoint(root / f"step-{step:08d}", **kwargs)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(path.name)
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory, or ``RUN/checkpoints``."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
        latest = candidate / LATEST
        if latest.is_file():
            target = candidate / latest.read_text().strip()
            if (target / MODEL_FILE).is_file():
                return target
    raise MMTLError(f"no checkpoint found in {path} (expected {MODEL_FILE} or checkpoints/{LATEST})")


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``."""
    try:
        return json.loads((checkpoint / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MMTLError(f"unreadable checkpoint metadata in {checkpoint}: {exc}") from None


def inference_weights(checkpoint: Path) -> str:
    """The weights file that evaluation and inference use: the moving average when there is one."""
    return EMA_FILE if (checkpoint / EMA_FILE).is_file() else MODEL_FILE


def load_weights(model: torch.nn.Module, checkpoint: Path, file: str = MODEL_FILE) -> None:
    """Load ``file`` (default ``model.safetensors``) of ``checkpoint`` into ``model`` (strict: every key must match)."""
    try:
        missing, unexpected = load_model(model, str(checkpoint / file), strict=False)
    except Exception as exc:  # safetensors raises several types for damaged files, torch one for shapes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        mismatched = str(exc).count("size mismatch")
        detail = lines[0]
        if mismatched:  # one line, not torch's list of every tensor
            detail = (f"{mismatched} tensor(s) differ in shape, e.g. {lines[-1].removeprefix('size mismatch for ')} "
                      "(was the model built with other settings?)")
        raise MMTLError(f"cannot load weights from {checkpoint / file}: {detail}") from None
    if missing or unexpected:
        raise MMTLError(
            f"checkpoint {checkpoint} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    """The resumable training state, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise MMTLError(f"{checkpoint} has no {STATE_FILE}: it cannot be resumed (was it saved for inference only?)")
    return torch.load(path, map_location="cpu", weights_only=True)
