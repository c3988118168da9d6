"""``mmtl tune-weights``: tuned scalarisation, the honest baseline of multi-task balancing.

Kurin et al. (NeurIPS 2022) and Xin et al. (NeurIPS 2022) find that a small search over *fixed* task
weights, chosen on a validation split, matches most specialised balancers. This module runs that
search within a budget: every combination of ``values`` as task weights (scaled to mean 1, duplicates
up to scale dropped, equal weights first), at most ``budget`` of them, each trained with
``balancer.name=fixed`` for ``steps`` steps and scored on ``data.val_split`` against the single-task
models (``mmtl baselines``, trained first unless given). The winner has no regressed task if any
candidate has none, then the highest Δm. It is written as a config (``OUT/tuned.yaml``, the input
config with the chosen ``balancer.weights``) that ``mmtl train --config`` runs as it is, and every
candidate's score goes to ``OUT/tuning.json``.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtl.single_task import train_baselines
from mmtl.config import BalancerConfig, ExperimentConfig, save_config
from mmtl.errors import MMTLError
from mmtl.evaluation.baselines import baseline_split_metrics, read_baselines
from mmtl.evaluation.delta import MetricRoles, delta_m
from mmtl.evaluation.evaluate import evaluate
from mmtl.training.run import make_trainer

log = logging.getLogger(__name__)

TUNED_CONFIG, TUNING_FILE = "tuned.yaml", "tuning.json"


@dataclass
class TuningResult:
    """The chosen weights, every candidate's validation score, and the files written."""

    weights: dict[str, float]
    candidates: list[dict[str, Any]]
    config_path: Path
    baselines_path: Path


def weight_grid(tasks: list[str], values: list[float]) -> list[dict[str, float]]:
    """Every combination of ``values`` as task weights, scaled to mean 1, without duplicates up to scale;
    equal weights (the plain multi-task run) first."""
    grid: dict[tuple[float, ...], dict[str, float]] = {}
    for combination in itertools.product(values, repeat=len(tasks)):
        mean = sum(combination) / len(combination)
        if mean <= 0:
            continue
        scaled = tuple(round(v / mean, 6) for v in combination)
        grid.setdefault(scaled, dict(zip(tasks, scaled)))
    return sorted(grid.values(), key=lambda w: len(set(w.values())) > 1)


def best_on_validation(candidates: list[tuple[dict[str, float], dict[str, Any]]]
                       ) -> tuple[dict[str, float], dict[str, Any]]:
    """The (weights, Δm report) with no regressed task first, then the highest Δm (None ranks last)."""
    def key(item: tuple[dict[str, float], dict[str, Any]]) -> tuple[bool, float]:
        delta = item[1]
        return (not delta["regressed"], -float("inf") if delta["delta_m"] is None else delta["delta_m"])

    return max(candidates, key=key)


def _candidate_config(config: ExperimentConfig, weights: dict[str, float], run: Path, steps: int) -> ExperimentConfig:
    candidate = copy.deepcopy(config)
    candidate.balancer = BalancerConfig(name="fixed", options={"weights": dict(weights)})
    candidate.output_dir, candidate.train.steps, candidate.train.overwrite = str(run), steps, True
    candidate.train.eval_every = 0  # scored once, at the end, on the validation split
    candidate.validation.protect = False
    return candidate


def _score(config: ExperimentConfig, weights: dict[str, float], run: Path, steps: int,
           reference: dict[str, dict[str, float]], tolerance: float) -> dict[str, Any]:
    """Train one candidate and return its Δm report against ``reference`` on the validation split."""
    done = run / "candidate.json"
    if done.is_file():  # an interrupted search continues where it stopped
        return json.loads(done.read_text())
    candidate = _candidate_config(config, weights, run, steps)
    trainer = make_trainer(candidate)
    trainer.run()
    result = evaluate(trainer.components, candidate, trainer.device, split=candidate.data.val_split,
                      max_samples=candidate.validation.max_samples)
    report = delta_m(result.metrics, reference, result.primary, tolerance=tolerance,
                     trivial=result.baselines or None, roles=MetricRoles.of(trainer.components.tasks)).to_dict()
    record = {"weights": weights, "delta_m": report["delta_m"], "regressed": report["regressed"],
              "per_task": report["per_task"], "run": str(run)}
    done.write_text(json.dumps(record, indent=2))
    return record


def tune_weights(config: ExperimentConfig, out_dir: Path, values: list[float], budget: int = 0,
                 steps: int | None = None, baselines: str | Path | None = None,
                 tolerance: float | None = None) -> TuningResult:
    """Search fixed task weights for ``config`` (see the module docstring); write ``OUT/tuned.yaml``.

    ``budget``: at most this many candidates (0: the whole grid); ``steps``: training steps per
    candidate (default ``train.steps``); ``baselines``: a ``baselines.json`` scored on
    ``data.val_split`` (default: trained into ``OUT/baselines`` with the same budget).
    """
    if len(config.tasks) < 2:
        raise MMTLError("tune-weights needs a multi-task config (tasks: lists one task)")
    if not values or any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise MMTLError(f"--values must be non-negative weights with one above 0, got {values}")
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = steps or config.train.steps
    if baselines is None:
        base_config = copy.deepcopy(config)
        base_config.train.steps = steps
        baselines = train_baselines(base_config, out_dir / "baselines", resume=True)
    reference, _ = baseline_split_metrics(read_baselines(baselines), config.data.val_split)
    grid = weight_grid(list(config.tasks), values)
    grid = grid[:budget] if budget else grid
    tolerance = config.validation.tolerance if tolerance is None else tolerance
    scored = []
    for index, weights in enumerate(grid):
        log.warning("tune-weights: candidate %d of %d: %s", index + 1, len(grid), weights)
        scored.append(_score(config, weights, out_dir / f"candidate-{index}", steps, reference, tolerance))
    chosen, _ = best_on_validation([(s["weights"], s) for s in scored])
    tuned = copy.deepcopy(config)
    tuned.balancer = BalancerConfig(name="fixed", options={"weights": dict(chosen)})
    save_config(tuned, out_dir / TUNED_CONFIG)
    (out_dir / TUNING_FILE).write_text(json.dumps({"weights": chosen, "steps": steps, "split": config.data.val_split,
                                                   "baselines": str(baselines), "candidates": scored}, indent=2))
    return TuningResult(chosen, scored, out_dir / TUNED_CONFIG, Path(baselines))
