"""Single-task baselines: one model per task with the multi-task run's budget, and their metrics.

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
from typing import Any, Callable

from data_pipelines.mixing import source_counts, training_sources
from mmtl.config import BalancerConfig, ExperimentConfig, SourceConfig
from mmtl.errors import MMTLError

log = logging.getLogger(__name__)

BASELINES_FILE = "baselines.json"
TASK_FILE = "baseline.json"


def single_task_config(config: ExperimentConfig, task: str, out_dir: Path) -> ExperimentConfig:
    """``config`` for ``task`` alone: same model, data, steps and seed, plain loss weighting, in ``out_dir/task``.

    With ``data.sources`` only the sources that feed ``task`` stay, each narrowed to it.
    """
    single = copy.deepcopy(config)
    single.tasks, single.output_dir = [task], str(out_dir / task)
    single.balancer = BalancerConfig()
    single.train.eval_every = 0  # no validation (it could need the very baselines being written)
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
    from mmtl.training.loop import Trainer

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
        trainer = Trainer(single, resume="latest" if started else None)
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


def _evaluate_single(trainer: Any, single: ExperimentConfig, config: ExperimentConfig) -> dict[str, Any]:
    """Metrics of a trained single-task model on ``eval.split`` and the validation split, overall and per source."""
    from mmtl.evaluation.evaluate import evaluate
    from mmtl.evaluation.savings import forward_flops_per_sample

    task = single.tasks[0]
    evaluated = evaluate(trainer.components, single, trainer.device)
    split_metrics = {config.eval.split: evaluated.metrics[task]}
    split_sources = {config.eval.split: _per_source(evaluated, task)}
    for split in _extra_splits(config):
        try:
            other = evaluate(trainer.components, single, trainer.device, split=split,
                             max_samples=config.validation.max_samples, trivial_baselines=False)
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


def _per_source(result: Any, task: str) -> dict[str, dict[str, float]]:
    return {source: part["model"][task] for source, part in result.sources.items() if task in part["model"]}


def read_baselines(path: str | Path) -> dict[str, Any]:
    """A ``baselines.json`` written by :func:`train_baselines` (MMTLError if missing or malformed)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        tasks = record["tasks"]
        for task, entry in tasks.items():
            if not isinstance(entry.get("metrics"), dict) or "primary_metric" not in entry:
                raise KeyError(f"task {task} lacks metrics or primary_metric")
    except FileNotFoundError:
        raise MMTLError(f"baselines file not found: {path} (write it with `mmtl baselines --config ...`)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MMTLError(f"{path} is not a baselines file written by `mmtl baselines` ({type(exc).__name__}: {exc})") from None
    return record


def baseline_split_metrics(baselines: dict[str, Any], split: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({task: metrics}, {task: {source: metrics}}) of the baselines on ``split`` (MMTLError if not evaluated there)."""
    overall, per_source = {}, {}
    for task, entry in baselines["tasks"].items():
        by_split = {baselines.get("split"): entry["metrics"], **entry.get("split_metrics", {})}
        if split not in by_split:
            evaluated = sorted(k for k in by_split if k)
            raise MMTLError(f"the baselines of {task} have no metrics on split {split!r} (evaluated on "
                            f"{', '.join(evaluated)})")
        overall[task] = by_split[split]
        sources = {baselines.get("split"): entry.get("source_metrics", {}), **entry.get("split_source_metrics", {})}
        per_source[task] = sources.get(split, {})
    return overall, per_source


def compare_with_baselines(result: Any, baselines: dict[str, Any], tolerance: float, lower_is_better: dict[str, Any],
                           parameters: dict[str, int] | None = None,
                           flops: Callable[[list[str]], int] | None = None,
                           vocabulary: int | None = None) -> dict[str, Any]:
    """Δm report (as a dict) of an :class:`EvalResult` against a read ``baselines.json``: overall and per source.

    ``parameters``: the multi-task model's parameter report (``shared`` and ``task:<t>``) and
    ``flops``: its forward FLOPs per sample when it runs the given tasks. Savings compare
    the multi-task model restricted to the tasks with a single-task model (shared parts plus their
    heads) with the sum of those single-task models; FLOPs likewise need every task's baseline.
    """
    from mmtl.evaluation.delta import delta_m

    overall, per_source = baseline_split_metrics(baselines, result.split)
    if not set(result.metrics) & set(overall):
        raise MMTLError(f"the baselines cover {sorted(overall)}, the model {sorted(result.metrics)}: no task in common")
    try:
        out = delta_m(result.metrics, overall, result.primary, lower_is_better, tolerance).to_dict()
    except ValueError as exc:
        raise MMTLError(f"Δm is undefined: {exc}") from None
    out["sources"] = {}
    for source, part in result.sources.items():
        base = {t: per_source[t][source] for t in part["model"] if source in per_source.get(t, {})}
        if len(result.sources) > 1 and base:
            out["sources"][source] = delta_m(part["model"], base, result.primary, lower_is_better,
                                             tolerance).to_dict()
    out.update(_savings(baselines["tasks"], list(result.metrics), parameters, flops))
    sizes = {t: e["vocabulary"] for t, e in baselines["tasks"].items() if t in result.metrics and e.get("vocabulary")}
    if vocabulary and sizes and vocabulary > max(sizes.values()):
        out["vocabulary_note"] = (f"the multi-task model's vocabulary holds {vocabulary:,} tokens (every source's "
                                  "text), the single-task models' " + ", ".join(f"{t} {n:,}" for t, n in sizes.items())
                                  + ": embeddings and decoder outputs grow with it")
    return out


def _savings(tasks: dict[str, Any], model_tasks: list[str], parameters: dict[str, int] | None,
             flops: Callable[[list[str]], int] | None) -> dict[str, Any]:
    """Like-with-like savings: the multi-task model's share for the common tasks vs their single-task models."""
    from mmtl.evaluation.savings import savings

    common = [t for t in model_tasks if t in tasks]
    out: dict[str, Any] = {}
    if parameters:
        separate = {t: int(tasks[t].get("parameters", 0)) for t in common}
        if all(separate.values()):
            own = parameters["shared"] + sum(parameters.get(f"task:{t}", 0) for t in common)
            out["parameters"] = savings(own, separate)
    if flops is not None:
        separate_flops = {t: baseline_flops(tasks[t]) for t in common}
        if all(separate_flops.values()):
            out["flops"] = savings(flops(common), separate_flops)
    missing = [t for t in model_tasks if t not in tasks]
    if missing:
        out["savings_tasks"] = common
        out["savings_note"] = (f"savings count the multi-task model's shared parts and the heads of "
                               f"{', '.join(common)} only (no single-task model of {', '.join(missing)})")
    return out


def baseline_flops(entry: dict[str, Any]) -> int | None:
    """A baseline's forward FLOPs per sample: stored, or counted from its checkpoint; None if neither."""
    if entry.get("flops_per_sample"):
        return int(entry["flops_per_sample"])
    run = entry.get("run")
    if not run or not Path(run).exists():
        return None
    from mmtl.evaluation.savings import checkpoint_flops_per_sample

    try:
        return checkpoint_flops_per_sample(run)
    except MMTLError:
        return None
