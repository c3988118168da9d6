"""The single-task baselines file (``baselines.json``, written by :mod:`mmtl.single_task`): reading it,
its metrics per split, and the Δm and savings report of a multi-task model against it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mmtl.errors import MMTLError
from mmtl.evaluation.delta import MetricRoles, delta_m
from mmtl.evaluation.evaluate import EvalResult
from mmtl.evaluation.savings import checkpoint_flops_per_sample, savings
from mmtl.files import read_bounded

BASELINES_FILE = "baselines.json"
TASK_FILE = "baseline.json"
MAX_BASELINES_BYTES = 16 * 2**20  # metrics of a few tasks and sources; a larger file is not one mmtl wrote


def read_baselines(path: str | Path) -> dict[str, Any]:
    """A ``baselines.json`` written by :func:`train_baselines` (MMTLError if missing or malformed)."""
    path = Path(path)
    try:
        record = json.loads(read_bounded(path, MAX_BASELINES_BYTES))
        tasks = record["tasks"]
        for task, entry in tasks.items():
            if not isinstance(entry.get("metrics"), dict) or "primary_metric" not in entry:
                raise KeyError(f"task {task} lacks metrics or primary_metric")
    except FileNotFoundError:
        raise MMTLError(f"baselines file not found: {path} (write it with `mmtl baselines --config ...`)") from None
    except OSError as exc:
        raise MMTLError(f"cannot read baselines file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
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


def compare_with_baselines(result: EvalResult, baselines: dict[str, Any], tolerance: float, roles: MetricRoles,
                           parameters: dict[str, int] | None = None,
                           flops: Callable[[list[str]], int] | None = None,
                           vocabulary: int | None = None) -> dict[str, Any]:
    """Δm report (as a dict) of an :class:`EvalResult` against a read ``baselines.json``: overall and per source.

    ``roles``: what each task's metrics mean (:meth:`MetricRoles.of` the model's tasks). The trivial
    baselines in ``result`` (same split) keep a single-task model that did not learn out of Δm.
    ``parameters``: the multi-task model's parameter report (``shared`` and ``task:<t>``) and
    ``flops``: its forward FLOPs per sample when it runs the given tasks. Savings compare
    the multi-task model restricted to the tasks with a single-task model (shared parts plus their
    heads) with the sum of those single-task models; FLOPs likewise need every task's baseline.
    """
    overall, per_source = baseline_split_metrics(baselines, result.split)
    if not set(result.metrics) & set(overall):
        raise MMTLError(f"the baselines cover {sorted(overall)}, the model {sorted(result.metrics)}: no task in common")
    try:
        out = delta_m(result.metrics, overall, result.primary, tolerance=tolerance, trivial=result.baselines or None,
                      roles=roles).to_dict()
    except ValueError as exc:
        raise MMTLError(f"Δm is undefined: {exc}") from None
    out["sources"] = {}
    for source, part in result.sources.items():
        base = {t: per_source[t][source] for t in part["model"] if source in per_source.get(t, {})}
        if len(result.sources) > 1 and base:
            out["sources"][source] = delta_m(part["model"], base, result.primary, tolerance=tolerance,
                                             trivial=part.get("baseline") or None, roles=roles).to_dict()
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
    try:
        return checkpoint_flops_per_sample(run)
    except MMTLError:
        return None
