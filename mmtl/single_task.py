"""``mmtl baselines``: one single-task model per task with the multi-task run's budget, and their metrics.

Works for any training config: with ``data.sources`` each task's model trains on the sources that
feed that task (mixed by the same strategy) and is evaluated on each of their held-out splits. Each
finished task is written to ``OUT/<task>/baseline.json`` at once, so ``resume=True`` skips the tasks
already done and continues an interrupted task's training from its latest checkpoint.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from data_pipelines.mixing import source_counts, training_sources
from mmtl.config import BalancerConfig, ExperimentConfig, SourceConfig
from mmtl.errors import MMTLError
from mmtl.evaluation.baselines import BASELINES_FILE, TASK_FILE
from mmtl.evaluation.evaluate import EvalOptions, EvalResult, evaluate
from mmtl.evaluation.savings import forward_flops_per_sample
from mmtl.training.loop import Trainer
from mmtl.training.run import make_trainer

log = logging.getLogger(__name__)


def single_task_config(config: ExperimentConfig, task: str, out_dir: Path) -> ExperimentConfig:
    """``config`` for ``task`` alone: same model, data, steps and seed, plain loss weighting, in ``out_dir/task``.

    With ``data.sources`` only the sources that feed ``task`` stay, each narrowed to it.
    """
    single = copy.deepcopy(config)
    single.tasks, single.output_dir = [task], str(out_dir / task)
    single.balancer = BalancerConfig()
    single.train.eval_every = 0  # no validation (it could need the very baselines being written)
    single.validation.protect = False  # one task: nothing to protect it from
    if config.data.sources:
        feeding = [(cfg, src) for cfg, src in zip(config.data.sources, training_sources(config.data))
                   if source_counts(src, [task]).tasks]
        if not feeding:
            raise MMTLError(f"no source in data.sources feeds task {task} (none has its annotations in its "
                            "training split, or each lists other tasks)")
        single.data.sources = [replace(cfg, tasks=[task]) if isinstance(cfg, SourceConfig) else cfg
                               for cfg, _ in feeding]
    return single


def _held_runs(out_dir: Path, tasks: list[str]) -> list[str]:
    return [t for t in tasks if (out_dir / t / "log.jsonl").exists() or (out_dir / t / "checkpoints").exists()]


def train_baselines(config: ExperimentConfig, out_dir: Path, resume: bool = False) -> Path:
    """Train and evaluate one single-task model per task of ``config``; write ``out_dir/baselines.json``.

    Each entry stores the metrics on ``eval.split`` overall (``metrics``) and per source
    (``source_metrics``), the same on every evaluated split (``split_metrics`` /
    ``split_source_metrics``: also ``data.val_split``, which validation during training compares
    against), the parameter count and the forward FLOPs per sample (see mmtl/evaluation/savings.py).
    ``resume``: skip the tasks whose ``baseline.json`` exists, continue the others' runs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    held = _held_runs(out_dir, list(config.tasks))
    if held and not resume and not config.train.overwrite:
        raise MMTLError(f"{out_dir} already holds baseline runs ({', '.join(held)}); continue them with "
                        "`mmtl baselines ... --resume`, or start over with train.overwrite=true")
    singles = {task: single_task_config(config, task, out_dir) for task in config.tasks}  # refuse early
    results: dict[str, Any] = {}
    for task, single in singles.items():
        done = out_dir / task / TASK_FILE
        if resume and done.is_file():
            results[task] = _finished(done, single)
            log.warning("baselines: %s already done (%s), skipped", task, done)
            continue
        started = resume and task in held and (out_dir / task / "checkpoints" / "LATEST").is_file()
        if resume and task in held and not started:  # stopped before its first checkpoint: nothing to continue
            single.train.overwrite = True
        trainer = make_trainer(single, resume="latest" if started else None)
        trainer.run()
        results[task] = {**_evaluate_single(trainer, single, config), "settings": _settings(single)}
        done.write_text(json.dumps(results[task], indent=2))
    extra = _extra_splits(config)
    record = {"split": config.eval.split, "max_samples": config.eval.max_samples, "steps": config.train.steps,
              "split_max_samples": {config.eval.split: config.eval.max_samples,
                                    **{s: config.validation.max_samples for s in extra}},
              "data": [s.path for s in training_sources(config.data)], "tasks": results}
    path = out_dir / BASELINES_FILE
    path.write_text(json.dumps(record, indent=2))
    return path


def _settings(single: ExperimentConfig) -> dict[str, Any]:
    """What a finished baseline must share with the config it is reused for (``--resume``)."""
    full = single.to_dict()
    return {"seed": full["seed"], "tasks": full["tasks"], "model": full["model"], "data": full["data"],
            "steps": full["train"]["steps"], "lr": full["train"]["lr"]}


def _finished(path: Path, single: ExperimentConfig) -> dict[str, Any]:
    """A finished task's entry, refused when it was trained with other settings than ``single``."""
    entry = json.loads(path.read_text())
    stored, current = entry.get("settings", {}), json.loads(json.dumps(_settings(single)))
    differing = [key for key in current if stored.get(key) != current[key]]
    if differing:
        raise MMTLError(f"{path} was trained with other settings ({', '.join(differing)} differ); resume with the "
                        "same config and overrides, or start over with train.overwrite=true")
    return entry


def _extra_splits(config: ExperimentConfig) -> list[str]:
    return [s for s in dict.fromkeys([config.data.val_split]) if s != config.eval.split]


def _evaluate_single(trainer: Trainer, single: ExperimentConfig, config: ExperimentConfig) -> dict[str, Any]:
    """Metrics of a trained single-task model on ``eval.split`` and the validation split, overall and per source."""
    task = single.tasks[0]
    evaluated = evaluate(trainer.components, single, trainer.device)
    split_metrics = {config.eval.split: evaluated.metrics[task]}
    split_sources = {config.eval.split: _per_source(evaluated, task)}
    for split in _extra_splits(config):
        try:
            other = evaluate(trainer.components, single, trainer.device, split=split,
                             max_samples=config.validation.max_samples, options=EvalOptions(trivial_baselines=False, data_metrics=False))
        except MMTLError as exc:  # no source has this split: validation cannot compare against it
            log.warning("baselines: %s not evaluated on split %r: %s", task, split, exc)
            continue
        split_metrics[split], split_sources[split] = other.metrics[task], _per_source(other, task)
    return {
        "metrics": evaluated.metrics[task], "primary_metric": evaluated.primary[task],
        "source_metrics": split_sources[config.eval.split],
        "lower_is_better": list(getattr(trainer.components.tasks[0], "lower_is_better", ())),
        "parameters": trainer.model.parameter_report()["total"], "run": single.output_dir,
        "vocabulary": trainer.components.vocab.size,
        "flops_per_sample": forward_flops_per_sample(trainer.components, single),
        "split_metrics": split_metrics, "split_source_metrics": split_sources,
    }


def _per_source(result: EvalResult, task: str) -> dict[str, dict[str, float]]:
    return {source: part["model"][task] for source, part in result.sources.items() if task in part["model"]}
