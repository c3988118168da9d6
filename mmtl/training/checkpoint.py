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

import errno
import json
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mmtl.config import ExperimentConfig, save_config
from mmtl.errors import MMTLError

MODEL_FILE, META_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "meta.json", "config.yaml", "train_state.pt"
EMA_FILE = "ema.safetensors"
LATEST = "LATEST"
BEST_NAME = "best"  # checkpoints/best: the best validation's weights (mmtl.training.validation)


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
    """Write a complete checkpoint to ``directory`` atomically (temp dir, then rename).

    Weights that are not finite are refused (MMTLError): a checkpoint must never silently hold NaN.
    A full disk or another write failure is an MMTLError naming the directory and the remedy; the
    previous checkpoint is left as it was.
    """
    refuse_nonfinite(model, directory)
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
        _replace_dir(tmp, directory)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, directory) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _replace_dir(new: Path, directory: Path) -> None:
    """Put ``new`` in place of ``directory``; an existing one is moved aside first, then deleted."""
    if directory.exists():
        old = directory.parent / f".{directory.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(new, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, directory)


def refuse_nonfinite(model: torch.nn.Module, directory: Path) -> None:
    """MMTLError when any floating-point tensor of ``model`` holds NaN or infinity (one host sync)."""
    tensors = [t for t in model.state_dict().values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        return
    bad = torch.stack([(~torch.isfinite(t.detach())).sum() for t in tensors]).sum()
    if int(bad):
        total = sum(t.numel() for t in tensors)
        raise MMTLError(f"refusing to write checkpoint {directory}: {int(bad):,} of {total:,} weights are NaN or "
                        "infinite (the training diverged; lower train.lr or raise train.warmup_steps, and resume from "
                        "an earlier checkpoint or start over)")


DISK_FULL_SIGNS = ("no space left", "storagefull", "code: 28", "unexpected pos", "file write failed")


def _write_error(exc: Exception, directory: Path) -> Exception:
    """The user-facing error for a failed checkpoint write (a full disk says so, with the free space)."""
    if isinstance(exc, MMTLError):
        return exc
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    disk_full = getattr(exc, "errno", None) == errno.ENOSPC or any(sign in text.lower() for sign in DISK_FULL_SIGNS)
    if disk_full:
        try:
            free = f"{shutil.disk_usage(directory.parent).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return MMTLError(f"no space left on the device while writing checkpoint {directory} ({free}); free some space "
                         "or set output_dir to another disk, then continue with --resume latest (the previous "
                         "checkpoint is intact)")
    if isinstance(exc, OSError):
        return MMTLError(f"cannot write checkpoint {directory}: {exc.strerror or first_line}"
                         f"{f' ({exc.filename})' if exc.filename else ''}")
    return MMTLError(f"cannot write checkpoint {directory}: {first_line}")


def remove_stale_temp(root: Path) -> list[Path]:
    """Delete the temp directories interrupted checkpoint writes left in ``root`` (call only from the
    process that writes the run's checkpoints); returns what was deleted."""
    stale = [p for pattern in (".step-*", f".{BEST_NAME}.*") for p in root.glob(pattern) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_run_checkpoint(run_dir: Path, step: int, keep: int = 3, **kwargs: Any) -> Path:
    """Write ``checkpoints/step-N``, point ``LATEST`` at it atomically, keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        remove_stale_temp(root)
    path = write_checkpoint(root / f"step-{step:08d}", **kwargs)
    pointer = root / f".{LATEST}.tmp"
    try:
        pointer.write_text(path.name)
        os.replace(pointer, root / LATEST)
    except OSError as exc:
        raise _write_error(exc, root / LATEST) from exc
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory, or ``RUN/checkpoints``.

    A ``LATEST`` pointer must name a directory inside its own folder; one that leads elsewhere
    (``../..``, an absolute path, a link out) is refused.
    """
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
        latest = candidate / LATEST
        if latest.is_file():
            target = _follow_pointer(latest)
            if (target / MODEL_FILE).is_file():
                return target
    raise MMTLError(f"no checkpoint found in {path} (expected {MODEL_FILE} or checkpoints/{LATEST})")


def _follow_pointer(latest: Path) -> Path:
    """The checkpoint directory ``latest`` names, confined to ``latest``'s folder."""
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MMTLError(f"cannot read {latest}: {getattr(exc, 'strerror', None) or exc}") from exc
    folder = latest.parent
    target = folder / name
    plain = bool(name) and name not in (".", "..") and Path(name).name == name and "\\" not in name
    if not plain or not target.resolve().is_relative_to(folder.resolve()):
        raise MMTLError(f"{latest} points outside {folder} ({name[:100]!r}); it must name a checkpoint directory "
                        f"inside it, such as step-00000100 (rewrite the file or delete it)")
    return target


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
    """The resumable training state, loaded with ``weights_only=True`` (no arbitrary unpickling).

    Called when a run resumes, by the process that writes the run's checkpoints: stale temp
    directories of interrupted writes beside ``checkpoint`` are deleted first.
    """
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise MMTLError(f"{checkpoint} has no {STATE_FILE}: it cannot be resumed (was it saved for inference only?)")
    if checkpoint.parent.name == "checkpoints":
        remove_stale_temp(checkpoint.parent)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message advises weights_only=False, which would run the payload
        raise MMTLError(f"refusing to load {path}: it holds Python objects other than tensors and plain values, which "
                        "could run code when loaded; resume only from checkpoints mmtl wrote, or start over "
                        "with train.overwrite=true") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        text = str(exc).strip()
        raise MMTLError(f"cannot read {path}: {text.splitlines()[0] if text else type(exc).__name__} (a damaged "
                        "checkpoint; resume from an earlier one by passing its directory to --resume)") from exc
