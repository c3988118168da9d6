"""Single-task baselines: one model per task with the multi-task run's budget, and their metrics."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mmtl.config import BalancerConfig, ExperimentConfig
from mmtl.errors import MMTLError

BASELINES_FILE = "baselines.json"


def train_baselines(config: ExperimentConfig, out_dir: Path) -> Path:
    """Train and evaluate one single-task model per task of ``config``; write ``out_dir/baselines.json``.

    Each model is the multi-task config with ``tasks=[t]`` (same model, data, steps and seed),
    trained with plain loss weighting in ``out_dir/<task>``. Each entry stores the metrics on
    ``eval.split`` (``metrics``), on every evaluated split (``split_metrics``: also ``data.val_split``
    when the data set has it, which validation during training compares against), the parameter
    count and the forward FLOPs per sample (``flops_per_sample``, see mmtl/evaluation/savings.py).
    """
    from data_pipelines.shards import read_dataset_info
    from mmtl.evaluation.evaluate import evaluate
    from mmtl.evaluation.savings import forward_flops_per_sample
    from mmtl.training.loop import Trainer

    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    splits = read_dataset_info(config.data.path).get("splits", {})
    extra_splits = [s for s in dict.fromkeys([config.data.val_split]) if s != config.eval.split and s in splits]
    for task in config.tasks:
        single = copy.deepcopy(config)
        single.tasks, single.output_dir = [task], str(out_dir / task)
        single.balancer = BalancerConfig()
        single.train.eval_every = 0  # no validation (it could need the very baselines being written)
        trainer = Trainer(single)
        trainer.run()
        evaluated = evaluate(trainer.components, single, trainer.device)
        split_metrics = {config.eval.split: evaluated.metrics[task]}
        for split in extra_splits:
            split_metrics[split] = evaluate(trainer.components, single, trainer.device, split=split,
                                            max_samples=config.validation.max_samples,
                                            trivial_baselines=False).metrics[task]
        results[task] = {
            "metrics": evaluated.metrics[task], "primary_metric": evaluated.primary[task],
            "lower_is_better": list(getattr(trainer.components.tasks[0], "lower_is_better", ())),
            "parameters": trainer.model.parameter_report()["total"], "run": single.output_dir,
            "flops_per_sample": forward_flops_per_sample(trainer.components, single),
            "split_metrics": split_metrics,
        }
    record = {"split": config.eval.split, "max_samples": config.eval.max_samples, "steps": config.train.steps,
              "split_max_samples": {config.eval.split: config.eval.max_samples,
                                    **{s: config.validation.max_samples for s in extra_splits}},
              "data": config.data.path, "tasks": results}
    path = out_dir / BASELINES_FILE
    path.write_text(json.dumps(record, indent=2))
    return path


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


def compare_with_baselines(metrics: dict[str, dict[str, float]], primary: dict[str, str], split: str,
                           baselines: dict[str, Any], tolerance: float, parameters: int | None = None,
                           flops: int | None = None) -> dict[str, Any]:
    """Δm report (as a dict) of evaluated multi-task ``metrics`` against a read ``baselines.json``.

    With ``parameters`` / ``flops`` (the multi-task model's total and its forward FLOPs per sample)
    the report adds ``parameters`` / ``flops`` savings against the separate models of the common
    tasks. Baseline files without ``flops_per_sample`` (older ones) are counted from the saved
    single-task checkpoints named by ``run`` when those still exist.
    """
    from mmtl.evaluation.delta import delta_m
    from mmtl.evaluation.savings import savings

    if baselines.get("split") != split:
        raise MMTLError(f"the baselines were evaluated on split {baselines.get('split')!r}, not {split!r}; "
                        f"evaluate with --split {baselines.get('split')}")
    tasks = baselines["tasks"]
    if not set(metrics) & set(tasks):
        raise MMTLError(f"the baselines cover {sorted(tasks)}, the model {sorted(metrics)}: no task in common")
    report = delta_m(metrics, {t: e["metrics"] for t, e in tasks.items()}, primary,
                     {t: e.get("lower_is_better", ()) for t, e in tasks.items()}, tolerance)
    out = report.to_dict()
    common = [t for t in tasks if t in metrics]
    separate = {t: int(tasks[t].get("parameters", 0)) for t in common}
    if parameters and all(separate.values()):
        out["parameters"] = savings(parameters, separate)
    separate_flops = {t: baseline_flops(tasks[t]) for t in common}
    if flops and all(separate_flops.values()):
        out["flops"] = savings(flops, separate_flops)
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
