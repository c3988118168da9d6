"""Fine-tuning a trained model for new modalities and new tasks (``mmtl finetune``).

The fine-tuned model is the base model plus what is added: encoders of new modalities
(``model.modalities``), heads of new tasks, and with ``strategy=lora`` low-rank adapters on the
fusion and the task heads that are switched on only for the new modalities and tasks. Training
reuses :class:`mmtl.training.loop.Trainer` (with validation) with the prepared model; only parameters that require
gradients train (``frozen``, ``lora``), or every parameter with the trained ones at a lower
learning rate (``full``). The result directory keeps only what is new (``delta.safetensors``)
plus the base checkpoint's path and the SHA-256 of its weights; it loads as one model through
``Predictor.from_pretrained``, ``mmtl predict`` and ``mmtl eval``.

This module runs a fine-tuning; the model side (strategies, adapters, alignment loss) is
``mmtl.models.adaptation``, and ``mmtl.checkpoint`` builds a model on its base and writes and reads
the delta.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from data_pipelines.shards import read_dataset_info
from mmtl.builder import Components, class_tasks
from mmtl.checkpoint import BaseCheckpoint, build_on_base, is_delta, load_base, write_delta
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import ExperimentConfig, ModalityConfig, save_config, validate
from mmtl.errors import MMTLError
from mmtl.evaluation.evaluate import evaluate
from mmtl.precision import resolve_device
from mmtl.registry import BALANCERS
from mmtl.training.loop import Trainer, TrainResult
from mmtl.training.run import make_trainer

log = logging.getLogger(__name__)

REGRESSION_FILE = "regression.json"
FINETUNE_CONFIG_FILE = "finetune.yaml"  # the settings a fine-tuning started with (for --resume)


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


def old_task_metrics(components: Components, old_tasks: list[str], config: ExperimentConfig,
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
    check_finetune(base, tuned, resume)
    torch.manual_seed(tuned.seed)  # the new parts' initial weights follow the run's seed
    components, delta = build_on_base(base, tuned)
    model = components.model
    if not any(p.requires_grad for part in (model.encoders, model.fusion) for p in part.parameters()):
        # only new heads train: there is no shared trainable parameter to monitor per-task gradients on
        tuned = dataclasses.replace(tuned, train=dataclasses.replace(tuned.train, monitor_every=0))
    device = resolve_device(tuned.train.device)
    old_tasks = list(base.config.tasks)
    check = regression_check_on(tuned)
    before = old_task_metrics(components, old_tasks, tuned, device) if check else {}
    trainer, result = train_finetune(checkpoint, config, tuned, components, resume)
    model = components.model.cpu()
    write_delta(out, components, tuned, base, delta, trainer.step)
    shutil.rmtree(out / "train" / "checkpoints", ignore_errors=True)  # full copies; the delta is the result
    components.model.to(device)
    after = old_task_metrics(components, old_tasks, tuned, device) if check else {}
    rows = regression_rows(before, after)
    (out / REGRESSION_FILE).write_text(json.dumps(
        {"split": tuned.finetune.regression_split, "samples": tuned.finetune.regression_samples,
         "strategy": tuned.finetune.strategy, "rows": [{**dataclasses.asdict(r), "change": r.change} for r in rows]},
        indent=2))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FinetuneResult(out, rows, result.final_losses, result.seconds, trained)


def check_finetune(base: BaseCheckpoint, tuned: ExperimentConfig, resume: str | None) -> None:
    """An MMTLError when the fine-tuning ``tuned`` cannot start: its output already holds a result (unless
    resumed or overwritten), its data has classes the base does not know, or its alignment loss has no
    loss-weighting balancer to be weighted by."""
    out = Path(tuned.output_dir)
    if resume is None and is_delta(out) and not tuned.train.overwrite:
        raise MMTLError(f"{out} already holds a fine-tuned model; choose another output_dir or set train.overwrite=true")
    classes = set(read_dataset_info(tuned.data.path).get("classes", []))
    unknown = sorted(classes - set(base.meta["classes"])) if class_tasks(tuned) else []
    if unknown:
        raise MMTLError(f"{tuned.data.path} has classes the base model does not know: {', '.join(unknown[:5])}")
    if tuned.finetune.align_weight > 0 and BALANCERS.get(tuned.balancer.name).kind != "loss":
        weighting = [key for key, balancer in BALANCERS.items() if balancer.kind == "loss"]
        raise MMTLError(f"finetune.align_weight needs a loss-weighting balancer ({', '.join(weighting)})")


def regression_check_on(tuned: ExperimentConfig) -> bool:
    """Whether the old tasks are evaluated before and after (a warning when asked for without data)."""
    spec = tuned.finetune
    check = spec.regression_samples > 0 and bool(spec.regression_data)
    if spec.regression_samples > 0 and not check:
        log.warning("no non-regression check of the old tasks: set finetune.regression_data to the base model's "
                    "data set (a checkpoint's recorded data is never read)")
    return check


def train_finetune(checkpoint: str | Path, config: ExperimentConfig, tuned: ExperimentConfig,
                   components: Components, resume: str | None) -> tuple[Trainer, TrainResult]:
    """Train the prepared ``components`` with the ordinary trainer (step checkpoints in ``output_dir/train``);
    ``config`` (what the user gave) is saved as ``output_dir/finetune.yaml`` for a later ``--resume``.
    Returns the trainer and its result."""
    out = Path(tuned.output_dir)
    settings = out / FINETUNE_CONFIG_FILE
    if resume is None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, settings)
    resume_command = f"mmtl finetune --checkpoint {checkpoint} --config {settings} --resume latest"
    trainer = make_trainer(dataclasses.replace(tuned, output_dir=str(out / "train")), resume=resume,
                           components=components, resume_command=resume_command)
    return trainer, trainer.run()
