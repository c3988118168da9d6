"""Checkpoints: built, written atomically, loaded without unpickling arbitrary code.

The one place that writes and reads checkpoint directories: training runs (full checkpoints with
their training state and moving average), pretrained exports (:func:`save_pretrained`), fine-tuned
models (a delta on a base checkpoint: :func:`write_delta`, :func:`load_delta`) and what inference,
evaluation and fine-tuning load (:func:`load_checkpoint` reads a full checkpoint or a delta).
Every write refuses non-finite weights and is atomic (:func:`write_checkpoint`, :func:`write_delta`),
every weight file goes through :func:`load_weights`, every ``meta.json`` comes from :func:`checkpoint_meta`.

Layout of a checkpoint directory (what ``Predictor.from_pretrained`` and ``--resume`` read):
    model.safetensors   model weights
    ema.safetensors     moving average of the weights (with train.ema_decay > 0); inference prefers it
    meta.json           tasks, class list, vocabulary, step, parameter counts
    config.yaml         the resolved experiment config
    train_state.pt      optimiser, scheduler, scaler, balancer, RNG (tensors and plain types only)
A run keeps ``RUN/checkpoints/step-NNNNNNNN/`` directories and a ``LATEST`` file naming the newest.
A fine-tuned model's directory holds ``delta.safetensors`` (its new and trained tensors), ``config.yaml``
and ``meta.json``, whose ``finetune`` entry names the base checkpoint and the SHA-256 of its weights.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import torch
from safetensors.torch import load_file, save_file, save_model

from mmtl.builder import Components, build_components, components_from_meta
from mmtl.config import ExperimentConfig, load_config, load_saved_config, save_config
from mmtl.config.budget import MAX_META_BYTES
from mmtl.errors import MMTLError
from mmtl.files import (is_plain_name, read_bounded, read_pointer, sync_path, sync_tree, temp_prefix,
                        write_atomically, write_text_atomically)
from mmtl.models.adaptation import adapt
from mmtl.text import Vocabulary
from mmtl.version import __version__

MODEL_FILE, META_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "meta.json", "config.yaml", "train_state.pt"
EMA_FILE = "ema.safetensors"
DELTA_FILE = "delta.safetensors"
LATEST = "LATEST"
BEST_NAME = "best"  # checkpoints/best: the best validation's weights (mmtl.training.validation)


def write_checkpoint(
    directory: Path, model: torch.nn.Module, meta: dict[str, Any], config: ExperimentConfig,
    train_state: dict[str, Any] | None = None, ema: torch.nn.Module | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory`` atomically (temp dir, then rename).

    Weights that are not finite are refused (MMTLError): a checkpoint must never silently hold NaN.
    A full disk or another write failure is an MMTLError naming the directory and the remedy; the
    previous checkpoint is left as it was.
    """
    refuse_nonfinite(model.state_dict().values(), directory)
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
        sync_tree(tmp)
        _replace_dir(tmp, directory)
        sync_path(directory.parent)
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


def refuse_nonfinite(state: Iterable[torch.Tensor], directory: Path) -> None:
    """MMTLError when any floating-point tensor of ``state`` holds NaN or infinity (one host sync)."""
    tensors = [t for t in state if isinstance(t, torch.Tensor) and t.is_floating_point()]
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
    """Delete the temp directories and pointer files interrupted checkpoint writes left in ``root``
    (call only from the process that writes the run's checkpoints); returns what was deleted."""
    stale = [p for pattern in (".step-*", f".{BEST_NAME}.*") for p in root.glob(pattern) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    pointers = [p for p in root.glob(f"{temp_prefix(root / LATEST)}*.tmp") if not p.is_dir()]  # interrupted LATEST writes
    for path in pointers:
        path.unlink(missing_ok=True)
    return stale + pointers


def save_run_checkpoint(run_dir: Path, step: int, keep: int = 3, **kwargs: Any) -> Path:
    """Write ``checkpoints/step-N``, point ``LATEST`` at it atomically, keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        remove_stale_temp(root)
    path = write_checkpoint(root / f"step-{step:08d}", **kwargs)
    try:
        write_text_atomically(root / LATEST, path.name)
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
        name = read_pointer(latest)
    except (OSError, UnicodeDecodeError) as exc:
        raise MMTLError(f"cannot read {latest}: {getattr(exc, 'strerror', None) or exc}") from exc
    folder = latest.parent
    target = folder / name
    if not is_plain_name(name) or not target.resolve().is_relative_to(folder.resolve()):
        raise MMTLError(f"{latest} points outside {folder} ({name[:100]!r}); it must name a checkpoint directory "
                        f"inside it, such as step-00000100 (rewrite the file or delete it)")
    return target


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``, its fields of the types :func:`checkpoint_meta` writes (MMTLError naming
    the first that is not: a forged file gets one line, never a crash in the model builder)."""
    try:
        meta = json.loads(read_bounded(checkpoint / META_FILE, MAX_META_BYTES))
    except OSError as exc:
        raise MMTLError(f"unreadable checkpoint metadata in {checkpoint}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MMTLError(f"unreadable checkpoint metadata in {checkpoint}: {exc}") from None
    problem = _meta_problem(meta)
    if problem:
        raise MMTLError(f"{checkpoint / META_FILE} is not checkpoint metadata mmtl wrote: {problem}")
    return meta


def _meta_problem(meta: object) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key in ("classes", "class_sources"):
        names = meta.get(key, [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return f"{key} must be a list of strings"
    if "classes" not in meta or "vocab" not in meta:
        return "classes and vocab are required"
    if not isinstance(meta.get("label_mode", "multi"), str):
        return "label_mode must be a string"
    return Vocabulary.dict_problem(meta["vocab"])


def inference_weights(checkpoint: Path) -> str:
    """The weights file that evaluation and inference use: the moving average when there is one."""
    return EMA_FILE if (checkpoint / EMA_FILE).is_file() else MODEL_FILE


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (MMTLError naming the file when it is damaged or absent)."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise MMTLError(f"cannot load weights from {path}: {lines[0]}") from None


def tied_names(model: torch.nn.Module) -> list[list[str]]:
    """Groups of state-dict names that refer to one tensor (tied weights; ``save_model`` writes each once)."""
    groups: dict[int, list[str]] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


Assign = Callable[[torch.Tensor, torch.Tensor], None]


def load_weights(model: torch.nn.Module, checkpoint: Path, file: str = MODEL_FILE,
                 required: Collection[str] | None = None, assign: Assign | None = None) -> set[str]:
    """Load ``file`` of ``checkpoint`` into ``model``: the one strict weight loader.

    Every tensor in the file must exist in the model with the same shape, and every name in
    ``required`` (default: all of the model's) must be in the file; otherwise an MMTLError names
    the missing, unexpected and wrongly shaped tensors. ``assign(target, value)`` copies one tensor
    (default: ``load_state_dict``; sharded training passes one that keeps each rank's shard).
    Returns the names loaded (tied names included).
    """
    path = checkpoint / file
    state = read_weights(path)
    for names in tied_names(model):
        stored = next((state[n] for n in names if n in state), None)
        if stored is not None:
            state.update({n: stored for n in names if n not in state})
    own = model.state_dict()
    missing = sorted(set(own if required is None else required) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        problems = [f"missing {', '.join(missing[:5])}" if missing else "",
                    f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                    "shape " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
                    if wrong else ""]
        raise MMTLError(f"{path} does not match the model (was it built with other settings?): "
                        + "; ".join(filter(None, problems)))
    if assign is None:
        model.load_state_dict(state, strict=False)
    else:
        with torch.no_grad():
            for name, value in state.items():
                assign(own[name], value)
    return set(state)


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


def checkpoint_meta(components: Components, step: int) -> dict[str, Any]:
    """``meta.json`` of a checkpoint: what rebuilds ``components`` without the data (the one metadata writer)."""
    return {
        "mmtl_version": __version__, "step": step, "tasks": [t.name for t in components.tasks],
        "classes": list(components.classes), "label_mode": components.label_mode,
        "class_sources": list(components.class_sources), "vocab": components.vocab.to_dict(),
        "parameters": components.model.parameter_report(),
    }


def save_pretrained(components: Components, directory: str | Path) -> Path:
    """Write ``components``' model for inference (``config.yaml``, ``model.safetensors``, ``meta.json``),
    atomically: everything :func:`load_pretrained` or ``Predictor`` needs."""
    model = components.model
    settings = {t.name: t.settings_dict() for t in components.tasks if t.settings_dict()}
    config = ExperimentConfig(tasks=[t.name for t in components.tasks], model=model.config, task_settings=settings)
    return write_checkpoint(Path(directory), model=model, meta=checkpoint_meta(components, 0), config=config)


def load_checkpoint(path: str | Path) -> tuple[Components, ExperimentConfig, dict[str, Any], Path]:
    """Components (with the inference weights: the moving average when saved), config, meta and
    directory of the checkpoint in ``path`` (a checkpoint, a run, ``RUN/checkpoints``, or a fine-tuned model)."""
    if is_delta(path):
        return (*load_delta(path), Path(path))
    checkpoint = resolve_checkpoint(path)
    config = load_saved_config(checkpoint / CONFIG_FILE)
    meta = read_meta(checkpoint)
    try:
        components = components_from_meta(config, meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise MMTLError(f"checkpoint {checkpoint} has damaged metadata: {exc!r}") from None
    if "finetune" in meta:  # a fine-tuned model exported as one folder (mmtl.exporting): its adapters first
        adapt(components.model, config, loaded=())
    load_weights(components.model, checkpoint, inference_weights(checkpoint))
    return components, config, meta, checkpoint


def load_pretrained(directory: str | Path) -> Components:
    """The components saved by :func:`save_pretrained` (no pickle), their model in eval mode."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise MMTLError(f"{directory} holds no {MODEL_FILE} (write one with mmtl.checkpoint.save_pretrained)")
    components = load_checkpoint(directory)[0]
    components.model.eval()
    return components


@dataclass
class BaseCheckpoint:
    """A trained checkpoint that a fine-tuned model (a delta) builds on."""

    path: Path
    config: ExperimentConfig
    meta: dict[str, Any]
    sha256: str


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_base(path: str | Path) -> BaseCheckpoint:
    """The checkpoint in ``path`` (a run or checkpoint directory) to fine-tune; an MMTLError when there is none."""
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    if "finetune" in meta:  # a merged export too: its adapters would be adapted again
        raise MMTLError(f"{path} is itself a fine-tuned model; fine-tune its base checkpoint instead")
    return BaseCheckpoint(checkpoint, load_saved_config(checkpoint / CONFIG_FILE), meta,
                          file_sha256(checkpoint / MODEL_FILE))


def build_on_base(base: BaseCheckpoint, config: ExperimentConfig) -> tuple[Components, set[str]]:
    """The model of ``config`` (the base model plus ``config.finetune``'s additions) with the base weights
    loaded and the strategy applied (``mmtl.models.adaptation``), and the names of its new or trained tensors."""
    meta = base.meta
    components = build_components(config, list(meta["classes"]), Vocabulary.from_dict(meta["vocab"]),
                                  str(meta.get("label_mode", "multi")))
    loaded = load_weights(components.model, base.path, required=())  # the new parts are not in the base
    return components, adapt(components.model, config, loaded)


def write_delta(directory: Path, components: Components, config: ExperimentConfig, base: BaseCheckpoint,
                delta: set[str], step: int) -> Path:
    """Write the tensors named in ``delta``, config.yaml and meta.json (with the base's path and hash).

    Non-finite weights are refused like :func:`write_checkpoint`'s. The directory keeps what else it
    holds, so each file is written beside it, synced and renamed into place, meta.json last: loading
    starts there, so a crash part-way never pairs it with an older delta.
    """
    state = components.model.state_dict()
    # clones: tied weights share storage, which safetensors refuses to write twice
    tensors = {k: state[k].detach().cpu().clone().contiguous() for k in sorted(delta)}
    refuse_nonfinite(tensors.values(), directory)
    meta = checkpoint_meta(components, step)
    spec = config.finetune
    meta["finetune"] = {"base": str(base.path.resolve()), "base_sha256": base.sha256, "strategy": spec.strategy,
                        "added_modalities": list(spec.add_modalities), "added_tasks": list(spec.add_tasks),
                        "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values())}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, write in ((DELTA_FILE, lambda p: save_file(tensors, str(p))),
                            (CONFIG_FILE, lambda p: save_config(config, p)),
                            (META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))):
            write_atomically(directory / name, write)
    except Exception as exc:
        raise _write_error(exc, directory) from exc
    return directory


def is_delta(path: str | Path) -> bool:
    """Whether ``path`` holds a fine-tuned model written by :func:`write_delta`."""
    return (Path(path) / DELTA_FILE).is_file()


def load_delta(path: str | Path) -> tuple[Components, ExperimentConfig, dict[str, Any]]:
    """Base checkpoint + delta as one model (eval mode), its config and meta; the base must be where it
    was, unchanged (its SHA-256 is checked)."""
    path = Path(path)
    meta = read_meta(path)
    info = meta.get("finetune")
    if not isinstance(info, dict) or "base" not in info or "base_sha256" not in info:
        raise MMTLError(f"{path}/{META_FILE} does not say which base checkpoint {DELTA_FILE} belongs to")
    base_path = Path(info["base"])
    if not (base_path / MODEL_FILE).is_file():
        raise MMTLError(f"the base checkpoint of {path} is missing: {base_path / MODEL_FILE}")
    base = load_base(base_path)
    if base.sha256 != info["base_sha256"]:
        raise MMTLError(f"the base checkpoint {base_path} changed since {path} was fine-tuned from it "
                        f"(sha256 {base.sha256[:12]}... != {info['base_sha256'][:12]}...)")
    config = load_saved_config(path / CONFIG_FILE)
    components, delta = build_on_base(base, config)
    load_weights(components.model, path, DELTA_FILE, required=delta)
    components.model.eval()
    return components, config, meta
