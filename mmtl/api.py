"""The Python API: every step of the command line as a function that returns a result object.

``import mmtl`` exposes these (imported on first use, so ``import mmtl`` stays cheap)::

    config = mmtl.load_config("experiment.yaml", {"train.steps": 300})
    run = mmtl.train(config)                                # mmtl train
    single = mmtl.baselines(config)                         # mmtl baselines
    report = mmtl.evaluate(run.run_dir, config=config, baselines=single.path, update_card=True)  # mmtl eval
    mmtl.export(run.run_dir, "model")                       # mmtl export
    mmtl.Predictor.from_pretrained("model").predict(image="scene.png")

Errors in the user's input raise :class:`mmtl.errors.MMTLError` (the command line prints its
message on one line and exits with code 2).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from data_pipelines.shapes_world import write_shards
from mmtl.single_task import train_baselines
from mmtl.card import record_evaluation, write_card
import mmtl.components  # noqa: F401  (registers the components that configs name)
from mmtl.config import ExperimentConfig, FinetuneConfig, SyntheticConfig, build_dataclass
from mmtl.config import load_config as _load_config
from mmtl.errors import MMTLError
from mmtl.evaluation.baselines import baseline_split_metrics, compare_with_baselines, read_baselines
from mmtl.evaluation.delta import MetricRoles
from mmtl.evaluation.evaluate import evaluate as _evaluate
from mmtl.evaluation.savings import forward_flops_per_sample
from mmtl.exporting import export_model
from mmtl.finetuning import FinetuneResult, run_finetune
from mmtl.inference import Predictor
from mmtl.results import BaselinesRun, Evaluation, TrainRun
from mmtl.training.trackers import check_loggers
from mmtl.training.run import train as _train
from mmtl.training.validation import SUMMARY_FILE

Overrides = Sequence[str] | Mapping[str, Any] | None

__all__ = ["load_config", "synthesize", "train", "evaluate", "baselines", "finetune", "export", "Predictor"]


def _override_strings(overrides: Overrides) -> list[str]:
    """``key=value`` strings from a list of them or a ``{dotted.key: value}`` mapping (values as YAML)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise MMTLError(f"overrides must be a list of key=value strings or a mapping, got the string {overrides!r}")
    if isinstance(overrides, Mapping):
        return [f"{key}={_yaml_value(value)}" for key, value in overrides.items()]
    return [str(item) for item in overrides]


def _yaml_value(value: Any) -> str:
    """``value`` as one line of YAML that reads back as the same value (a string that looks like a
    number or a boolean is quoted)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def load_config(path: str | Path | None = None, overrides: Overrides = None) -> ExperimentConfig:
    """The experiment config of ``path`` (None: the built-in quickstart experiment) with ``overrides``.

    ``overrides``: dotted keys as on the command line, as a list (``["train.steps=200"]``) or a
    mapping (``{"train.steps": 200, "model.preset": "tiny"}``). A bad key or value raises MMTLError.
    """
    return _load_config(path, _override_strings(overrides))


def synthesize(out: str | Path, train: int = SyntheticConfig.train, val: int = SyntheticConfig.val,
               test: int = SyntheticConfig.test, *, seed: int = 0, difficulty: str = "medium",
               image_size: int = SyntheticConfig.image_size, overwrite: bool = False) -> dict[str, Any]:
    """Write the synthetic "shapes world" data set to ``out`` (``mmtl data synth``); returns its dataset.json.

    An existing data set is kept (and returned) unless ``overwrite``.
    """
    out = Path(out)
    if (out / "dataset.json").is_file() and not overwrite:
        return json.loads((out / "dataset.json").read_text())
    sizes = {"train": train, "val": val, "test": test}
    if any(n < 0 for n in sizes.values()):
        raise MMTLError(f"split sizes must be >= 0, got {sizes}")
    for old in out.glob("*.tar") if overwrite else ():
        old.unlink()
    return write_shards(out, {k: n for k, n in sizes.items() if n > 0}, seed=seed, difficulty=difficulty,
                        image_size=image_size)


def train(config: ExperimentConfig, *, resume: str | None = None, command: str | None = None) -> TrainRun:
    """Train a model as ``config`` says (``mmtl train``) and write its model card (``RUN/README.md``).

    ``resume``: 'latest' or a checkpoint directory to continue from. ``command``: the command
    line to record in the card (default: the equivalent ``mmtl train --config RUN/config.yaml``).
    """
    check_loggers(config.train.loggers)  # a missing extra fails before any work
    result = _train(config, resume=resume)
    summary = result.run_dir / SUMMARY_FILE
    validation = json.loads(summary.read_text()) if summary.is_file() else None
    card = write_card(result.run_dir, command=command, config=config) if int(os.environ.get("RANK", "0")) == 0 else None
    return TrainRun(result.run_dir, result.checkpoint, result.final_losses, result.seconds, result.components,
                    validation, card)


def evaluate(checkpoint: str | Path, *, data: str | None = None, config: ExperimentConfig | None = None,
             split: str | None = None, max_samples: int | None = None, examples: int = 0, device: str = "cpu",
             baselines: str | Path | None = None, tolerance: float = 0.01, update_card: bool = False) -> Evaluation:
    """Evaluate a run or checkpoint on a held-out split (``mmtl eval``), next to trivial baselines.

    The model comes from ``checkpoint``; the data from ``data`` (a shard directory, .tar or brace
    pattern) or from the data section of ``config``, your own experiment config (without ``data``:
    the held-out split of each of its sources). A checkpoint's own data settings are never used
    (README, Security model), so one of the two is required. ``split`` (default: the checkpoint's
    ``eval.split``); ``max_samples`` per source, exactly (0: all); ``examples``: keep that many
    outputs beside their references (``result.examples``). ``baselines``: a ``baselines.json``
    (``mmtl.baselines``) adds Δm and per-task verdicts against the single-task models;
    ``tolerance``: how far (relative) below its single-task model a task may fall before it counts as
    regressed. ``update_card``: record the metrics in the run's model card (off: evaluating writes
    nothing into the checkpoint's folder).
    """
    record = read_baselines(baselines) if baselines is not None else None  # a bad file fails before the work
    if record is not None and split is not None:
        baseline_split_metrics(record, split)
    if data is None and config is None:
        raise MMTLError("evaluate needs the data to evaluate on: data=SHARDS or config=YOUR_CONFIG (a checkpoint's "
                        "own data settings are never used)")
    predictor = Predictor.from_pretrained(checkpoint, device=device)
    run_config = predictor.config if config is None else dataclasses.replace(predictor.config, data=config.data)
    run_config.eval.num_examples = max(examples, 0)
    split = split or run_config.eval.split
    if record is not None:
        baseline_split_metrics(record, split)
    result = _evaluate(predictor.components, run_config, predictor.device, data_path=data, split=split,
                       max_samples=max_samples)
    comparison = None
    if record is not None:
        comparison = compare_with_baselines(
            result, record, tolerance, MetricRoles.of(predictor.components.tasks), predictor.model.parameter_report(),
            lambda tasks: forward_flops_per_sample(predictor.components, run_config, tasks),
            predictor.components.vocab.size)
    evaluation = Evaluation(Path(predictor.checkpoint or checkpoint), result, comparison)
    if update_card:
        record_evaluation(Path(checkpoint), evaluation.to_dict())
    return evaluation


def baselines(config: ExperimentConfig, out: str | Path | None = None, *, resume: bool = False) -> BaselinesRun:
    """Train one single-task model per task of ``config`` with the same budget (``mmtl baselines``).

    ``out`` (default ``<output_dir>-baselines``) receives ``baselines.json`` and one run per task;
    ``resume`` skips the tasks already done and continues an interrupted one.
    """
    check_loggers(config.train.loggers)
    path = train_baselines(config, Path(out) if out is not None else Path(f"{config.output_dir}-baselines"),
                           resume=resume)
    result = BaselinesRun(path, json.loads(path.read_text()))
    for task, entry in result.record["tasks"].items():  # each single-task run gets its card too
        metrics = {"split": result.record["split"], "primary_metric": {task: entry["primary_metric"]},
                   "model": {task: entry["metrics"]}, "baseline": {}}
        record_evaluation(Path(entry["run"]), metrics, command=f"mmtl baselines (the single-task model of {task})")
    return result


def finetune(checkpoint: str | Path, config: ExperimentConfig | None = None, *,
             add_modalities: Sequence[str] = (), add_tasks: Sequence[str] = (), strategy: str | None = None,
             align_weight: float | None = None, resume: str | None = None) -> FinetuneResult:
    """Add modalities and/or task heads to a trained model and train what is new (``mmtl finetune``).

    ``config`` holds the data, training, ``output_dir`` and ``finetune`` section (None: the built-in
    defaults); the keyword arguments set its ``finetune`` fields. The result names the folder of the
    fine-tuned model (it loads with ``Predictor.from_pretrained``) and the old tasks' regression table.
    """
    config = config if config is not None else load_config()
    changes: dict[str, Any] = {}
    if add_modalities:
        changes["add_modalities"] = [*config.finetune.add_modalities, *add_modalities]
    if add_tasks:
        changes["add_tasks"] = [*config.finetune.add_tasks, *add_tasks]
    if strategy is not None:
        changes["strategy"] = strategy
    if align_weight is not None:
        changes["align_weight"] = align_weight
    if changes:  # checked (types, choices) as the command line's overrides are
        merged = build_dataclass(FinetuneConfig, {**dataclasses.asdict(config.finetune), **changes}, "finetune")
        config = dataclasses.replace(config, finetune=merged)
    check_loggers(config.train.loggers)
    return run_finetune(checkpoint, config, resume=resume)


def export(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the inference-only folder of a run or checkpoint (``mmtl export``): weights (safetensors),
    ``config.yaml``, ``meta.json`` (tasks, classes, vocabulary) and the model card, no optimiser state.
    It loads with ``Predictor.from_pretrained(out)`` and predicts as the checkpoint does."""
    return export_model(checkpoint, out, overwrite=overwrite)
