"""Fine-tuning a trained model for new modalities and new tasks (``mmtl finetune``).

The fine-tuned model is the base model plus what is added: encoders of new modalities
(``model.modalities``), heads of new tasks, and with ``strategy=lora`` low-rank adapters on the
fusion and the task heads that are switched on only for the new modalities and tasks. Training
reuses :class:`mmtl.training.loop.Trainer` (with validation) with the prepared model; only parameters that require
gradients train (``frozen``, ``lora``), or every parameter with the trained ones at a lower
learning rate (``full``). The result directory keeps only what is new (``delta.safetensors``)
plus the base checkpoint's path and the SHA-256 of its weights; it loads as one model through
``Predictor.from_pretrained``, ``mmtl predict`` and ``mmtl eval``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from data_pipelines.shards import read_dataset_info
from mmtl.builder import Components, build_components, class_tasks
from mmtl.checkpoint import (
    CONFIG_FILE, META_FILE, MODEL_FILE, checkpoint_meta, load_weights, read_meta, resolve_checkpoint, sync_path,
)
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import ExperimentConfig, ModalityConfig, load_config, load_saved_config, save_config, validate
from mmtl.errors import MMTLError
from mmtl.evaluation.evaluate import evaluate
from mmtl.models.sharing import add_adapters
from mmtl.precision import resolve_device
from mmtl.registry import BALANCERS
from mmtl.text import Vocabulary
from mmtl.training.run import make_trainer

log = logging.getLogger(__name__)

DELTA_FILE = "delta.safetensors"
REGRESSION_FILE = "regression.json"
FINETUNE_CONFIG_FILE = "finetune.yaml"  # the settings a fine-tuning started with (for --resume)


@dataclass
class BaseCheckpoint:
    """A trained checkpoint that fine-tuning starts from."""

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
    """The checkpoint in ``path`` (a run or checkpoint directory); an MMTLError when there is none."""
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    if "finetune" in meta:
        raise MMTLError(f"{path} is itself a fine-tuned model; fine-tune its base checkpoint instead")
    return BaseCheckpoint(checkpoint, load_saved_config(checkpoint / CONFIG_FILE), meta,
                          file_sha256(checkpoint / MODEL_FILE))


def finetune_config(base: BaseCheckpoint, config: ExperimentConfig) -> ExperimentConfig:
    """The fine-tuned model's experiment: the base model and tasks plus the additions of ``config.finetune``;
    data, training, balancer and evaluation settings come from ``config``."""
    spec = config.finetune
    model = copy.deepcopy(base.config.model)
    for name in spec.add_modalities:
        if name in ("image", "text") or name in model.modalities:
            raise MMTLError(f"the base model already has the modality {name!r}")
        model.modalities[name] = copy.deepcopy(config.model.modalities.get(name, ModalityConfig()))
    duplicate = [t for t in spec.add_tasks if t in base.config.tasks]
    if duplicate:
        raise MMTLError(f"the base model already has the task(s) {', '.join(duplicate)}")
    if not spec.add_modalities and not spec.add_tasks:
        raise MMTLError("nothing to add: give --add-modality NAME and/or --add-task NAME")
    tuned = dataclasses.replace(config, model=model, tasks=[*base.config.tasks, *spec.add_tasks])
    validate(tuned)
    return tuned


class Alignment(nn.Module):
    """Pulls the pooled representation of ``modality`` toward that of ``paired`` on rows that carry both
    (mean squared error against the paired one, which gets no gradient), scaled by ``weight``."""

    def __init__(self, modality: str, paired: str, weight: float) -> None:
        super().__init__()
        self.modality, self.paired, self.weight = modality, paired, weight

    def forward(self, model: nn.Module, batch: Any, cache: dict) -> torch.Tensor | None:
        if self.modality not in batch.inputs:
            return None
        _, paired_present = model.modalities[self.paired].batch_input(batch)
        both = (batch.inputs[self.modality].present & paired_present).float()
        pooled = model.fuse(batch, (self.modality,), cache).pooled.float()
        with torch.no_grad():
            target = model.fuse(batch, (self.paired,), {}).pooled.float()
        error = (pooled - target).pow(2).mean(-1)
        return self.weight * (error * both).sum() / both.sum().clamp_min(1.0)


def transplant(source: nn.Module, target: nn.Module) -> int:
    """Copy ``source``'s tensors into ``target`` where names and shapes match; a convolution kernel whose
    input channels differ gets the source kernel summed over its channels (e.g. RGB -> one-channel maps)
    when the target has one input channel. Returns how many tensors were copied."""
    own, copied = target.state_dict(), 0
    with torch.no_grad():
        for key, tensor in source.state_dict().items():
            if key not in own:
                continue
            if own[key].shape == tensor.shape:
                own[key].copy_(tensor)
            elif tensor.ndim == 4 and own[key].shape[1] == 1 and own[key].shape[0] == tensor.shape[0] \
                    and own[key].shape[2:] == tensor.shape[2:]:
                own[key].copy_(tensor.sum(1, keepdim=True))
            else:
                continue
            copied += 1
    return copied


def build_finetuned(base: BaseCheckpoint, config: ExperimentConfig) -> tuple[Components, set[str]]:
    """The fine-tuned model for ``config`` (from :func:`finetune_config`) with the base weights loaded and
    the strategy applied; returns it and the names of its tensors that are new or trained (the delta)."""
    meta = base.meta
    components = build_components(config, list(meta["classes"]), Vocabulary.from_dict(meta["vocab"]),
                                  str(meta.get("label_mode", "multi")))
    model = components.model
    loaded = load_weights(model, base.path, required=())  # the new parts are not in the base
    base_tensors = {id(t) for k, t in model.state_dict(keep_vars=True).items() if k in loaded}
    spec = config.finetune
    for name in spec.add_modalities:
        source = config.model.modalities[name].init_from
        if source:
            if source not in model.encoders or source in spec.add_modalities:
                raise MMTLError(f"model.modalities.{name}.init_from: the base model has no modality {source!r}")
            transplant(model.encoders[source], model.encoders[name])
    old_modules = [f"encoders.{m}" for m in model.encoders if m not in spec.add_modalities]
    old_modules += ["fusion", "shared_heads", *(f"heads.{t}" for t in model.heads if t not in spec.add_tasks)]
    if spec.strategy == "full":
        model.lr_scales = {name: spec.old_lr_scale for name, p in model.named_parameters() if id(p) in base_tensors}
    else:
        for param in model.parameters():
            param.requires_grad_(id(param) not in base_tensors)
        model.frozen_parts = [name for name in old_modules if len(list(model.get_submodule(name).parameters()))]
    if spec.strategy == "lora":
        for name in old_modules[old_modules.index("fusion"):]:
            add_adapters(model.get_submodule(name), spec.lora_rank)
        model.adapted = frozenset([*spec.add_modalities, *spec.add_tasks])
    if spec.align_weight > 0:
        for name in spec.add_modalities:
            paired = model.modalities[name].stands_for
            if paired:
                model.auxiliary[f"align_{name}"] = Alignment(name, paired, spec.align_weight)
    if spec.strategy == "full":  # every tensor may move (normalisation statistics too): all of them are new
        return components, set(model.state_dict())
    delta = {k for k, t in model.state_dict(keep_vars=True).items() if id(t) not in base_tensors}
    return components, delta


def save_delta(directory: Path, components: Components, config: ExperimentConfig, base: BaseCheckpoint,
               delta: set[str], step: int) -> Path:
    """Write the new and trained tensors, meta.json (with the base's path and hash) and config.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    state = components.model.state_dict()
    # clones: tied weights share storage, which safetensors refuses to write twice
    tensors = {k: state[k].detach().cpu().clone().contiguous() for k in sorted(delta)}
    meta = checkpoint_meta(components, step)
    meta["finetune"] = {"base": str(base.path.resolve()), "base_sha256": base.sha256,
                        "strategy": config.finetune.strategy, "added_modalities": list(config.finetune.add_modalities),
                        "added_tasks": list(config.finetune.add_tasks), "tensors": len(tensors),
                        "parameters": sum(t.numel() for t in tensors.values())}
    # meta.json last: loading starts there, so a crash part-way never pairs it with an older delta
    for name, write in ((DELTA_FILE, lambda p: save_file(tensors, str(p))),
                        (CONFIG_FILE, lambda p: save_config(config, p)),
                        (META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))):
        tmp = directory / f".{name}.tmp"
        write(tmp)
        sync_path(tmp)
        os.replace(tmp, directory / name)
    sync_path(directory)
    return directory


def is_finetuned(path: str | Path) -> bool:
    """Whether ``path`` holds a fine-tuned model saved by :func:`save_delta`."""
    return (Path(path) / DELTA_FILE).is_file()


def load_finetuned(path: str | Path) -> tuple[Components, ExperimentConfig, dict[str, Any]]:
    """Base checkpoint + delta as one model (eval mode); the base must be where it was, unchanged."""
    path = Path(path)
    meta = read_meta(path)
    info = meta.get("finetune")
    if not isinstance(info, dict) or "base" not in info or "base_sha256" not in info:
        raise MMTLError(f"{path}/{META_FILE} does not say which base checkpoint {DELTA_FILE} belongs to")
    base_path = Path(info["base"])
    if not (base_path / MODEL_FILE).is_file():
        raise MMTLError(f"the base checkpoint of {path} is missing: {base_path / MODEL_FILE}")
    digest = file_sha256(base_path / MODEL_FILE)
    if digest != info["base_sha256"]:
        raise MMTLError(f"the base checkpoint {base_path} changed since {path} was fine-tuned from it "
                        f"(sha256 {digest[:12]}... != {info['base_sha256'][:12]}...)")
    config = load_saved_config(path / CONFIG_FILE)
    base = BaseCheckpoint(base_path, load_saved_config(base_path / CONFIG_FILE), read_meta(base_path), digest)
    components, delta = build_finetuned(base, config)
    load_weights(components.model, path, DELTA_FILE, required=delta)
    components.model.eval()
    return components, config, meta


@dataclass
class RegressionRow:
    """One metric of one old task before and after fine-tuning."""

    task: str
    metric: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before


def old_task_metrics(components: Components, old_tasks: list[str], base: BaseCheckpoint, config: ExperimentConfig,
                     device: torch.device) -> dict[str, dict[str, float]]:
    """Metrics of the old tasks on the base model's data (``finetune.regression_data``, ``regression_split``)."""
    spec = config.finetune
    check = copy.deepcopy(config)
    check.eval.max_samples = spec.regression_samples
    check.data = dataclasses.replace(config.data, path=spec.regression_data, sources=[])
    view = dataclasses.replace(components, tasks=[t for t in components.tasks if t.name in old_tasks])
    result = evaluate(view, check, device, data_path=spec.regression_data, split=spec.regression_split)
    components.model.train()
    return result.metrics


def regression_rows(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> list[RegressionRow]:
    """Every metric the two evaluations share."""
    return [RegressionRow(task, metric, value, after[task][metric])
            for task, metrics in before.items() for metric, value in metrics.items()
            if metric in after.get(task, {})]


def format_regression(rows: list[RegressionRow]) -> str:
    """A table: task, metric, before, after, change."""
    table = [("task", "metric", "before", "after", "change")]
    table += [(r.task, r.metric, f"{r.before:.4f}", f"{r.after:.4f}", f"{r.change:+.4f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class FinetuneResult:
    """What ``mmtl finetune`` produced."""

    directory: Path
    regression: list[RegressionRow]
    final_losses: dict[str, float]
    seconds: float
    trained_parameters: int


def run_finetune(checkpoint: str | Path, config: ExperimentConfig, resume: str | None = None) -> FinetuneResult:
    """Fine-tune the model in ``checkpoint`` as ``config.finetune`` says; write the delta to ``config.output_dir``.

    The old tasks are evaluated on the base model's data before and after (skipped when
    ``finetune.regression_samples`` is 0); the table is printed by the CLI and saved as regression.json.
    ``resume`` ('latest' or a checkpoint directory) continues an interrupted fine-tuning: its step
    checkpoints live in ``output_dir/train`` until the delta is written, and ``output_dir/finetune.yaml``
    holds the settings it was started with.
    """
    base = load_base(checkpoint)
    tuned = finetune_config(base, config)
    out = Path(tuned.output_dir)
    if resume is None and is_finetuned(out) and not tuned.train.overwrite:
        raise MMTLError(f"{out} already holds a fine-tuned model; choose another output_dir or set train.overwrite=true")
    classes = set(read_dataset_info(tuned.data.path).get("classes", []))
    unknown = sorted(classes - set(base.meta["classes"])) if class_tasks(tuned) else []
    if unknown:
        raise MMTLError(f"{tuned.data.path} has classes the base model does not know: {', '.join(unknown[:5])}")
    if tuned.finetune.align_weight > 0 and BALANCERS.get(tuned.balancer.name).kind != "loss":
        weighting = [key for key, balancer in BALANCERS.items() if balancer.kind == "loss"]
        raise MMTLError(f"finetune.align_weight needs a loss-weighting balancer ({', '.join(weighting)})")
    torch.manual_seed(tuned.seed)  # the new parts' initial weights follow the run's seed
    components, delta = build_finetuned(base, tuned)
    model = components.model
    if not any(p.requires_grad for part in (model.encoders, model.fusion) for p in part.parameters()):
        # only new heads train: there is no shared trainable parameter to monitor per-task gradients on
        tuned = dataclasses.replace(tuned, train=dataclasses.replace(tuned.train, monitor_every=0))
    device = resolve_device(tuned.train.device)
    old_tasks = list(base.config.tasks)
    check = tuned.finetune.regression_samples > 0 and bool(tuned.finetune.regression_data)
    if tuned.finetune.regression_samples > 0 and not check:
        log.warning("no non-regression check of the old tasks: set finetune.regression_data to the base model's "
                    "data set (a checkpoint's recorded data is never read)")
    before = old_task_metrics(components, old_tasks, base, tuned, device) if check else {}
    settings = out / FINETUNE_CONFIG_FILE
    if resume is None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, settings)
    resume_command = f"mmtl finetune --checkpoint {checkpoint} --config {settings} --resume latest"
    trainer = make_trainer(dataclasses.replace(tuned, output_dir=str(out / "train")), resume=resume,
                      components=components, resume_command=resume_command)
    result = trainer.run()
    model = components.model.cpu()
    save_delta(out, components, tuned, base, delta, trainer.step)
    shutil.rmtree(out / "train" / "checkpoints", ignore_errors=True)  # full copies; the delta is the result
    components.model.to(device)
    after = old_task_metrics(components, old_tasks, base, tuned, device) if check else {}
    rows = regression_rows(before, after)
    (out / REGRESSION_FILE).write_text(json.dumps(
        {"split": tuned.finetune.regression_split, "samples": tuned.finetune.regression_samples,
         "strategy": tuned.finetune.strategy, "rows": [{**dataclasses.asdict(r), "change": r.change} for r in rows]},
        indent=2))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FinetuneResult(out, rows, result.final_losses, result.seconds, trained)
