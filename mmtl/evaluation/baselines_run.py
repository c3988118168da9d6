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
    trained with plain loss weighting in ``out_dir/<task>``.
    """
    from mmtl.evaluation.evaluate import evaluate
    from mmtl.training.loop import Trainer

    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for task in config.tasks:
        single = copy.deepcopy(config)
        single.tasks, single.output_dir = [task], str(out_dir / task)
        single.balancer = BalancerConfig()
        trainer = Trainer(single)
        trainer.run()
        evaluated = evaluate(trainer.components, single, trainer.device)
        results[task] = {
            "metrics": evaluated.metrics[task], "primary_metric": evaluated.primary[task],
            "lower_is_better": list(getattr(trainer.components.tasks[0], "lower_is_better", ())),
            "parameters": trainer.model.parameter_report()["total"], "run": single.output_dir,
        }
    record = {"split": config.eval.split, "max_samples": config.eval.max_samples, "steps": config.train.steps,
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
                           baselines: dict[str, Any], tolerance: float, parameters: int | None = None) -> dict[str, Any]:
    """Δm report (as a dict) of evaluated multi-task ``metrics`` against a read ``baselines.json``."""
    from mmtl.evaluation.delta import delta_m

    if baselines.get("split") != split:
        raise MMTLError(f"the baselines were evaluated on split {baselines.get('split')!r}, not {split!r}; "
                        f"evaluate with --split {baselines.get('split')}")
    tasks = baselines["tasks"]
    if not set(metrics) & set(tasks):
        raise MMTLError(f"the baselines cover {sorted(tasks)}, the model {sorted(metrics)}: no task in common")
    report = delta_m(metrics, {t: e["metrics"] for t, e in tasks.items()}, primary,
                     {t: e.get("lower_is_better", ()) for t, e in tasks.items()}, tolerance)
    out = report.to_dict()
    separate = sum(int(e.get("parameters", 0)) for t, e in tasks.items() if t in metrics)
    if parameters and separate:
        out["parameters"] = {"multi_task": parameters, "separate_models": separate, "ratio": separate / parameters}
    return out
