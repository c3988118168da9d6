"""Validation during training: per-task metrics on the val split, drift alarm, best checkpoint, early stop.

Every ``train.eval_every`` steps (and at the last step) the :class:`Validator` evaluates the model on
``data.val_split`` with :func:`mmtl.evaluation.evaluate.evaluate` and logs ``val/<task>/<metric>``,
``val/<task>/loss``, ``val/loss`` and ``val/delta_m`` to ``log.jsonl`` and TensorBoard. A run on
``data.sources`` is validated on the val split of every source, for the tasks each feeds: the
``val/`` metrics pool all sources, and ``val_source/<source>/<task>/<metric>`` gives each source's.

Score of a validation. Its metrics are compared with a *reference*: the single-task baselines
(``validation.baselines``, their metrics on the same split), or, without baselines, the run's own
early validations: each metric's reference is its first non-zero value (normally the first
validation's). ``Δm`` is :func:`mmtl.evaluation.delta.delta_m` against the reference (without
baselines: the mean relative improvement over the first validation). A
task *regresses* when its primary metric lies more than ``validation.tolerance`` (relative) below
the reference's.

Selection (``validation.select``): ``delta_m`` scores a validation by Δm, ``loss`` by minus the sum of
the per-task validation losses. A validation is *qualified* when no task regressed; validations
are ordered by (qualified, score), so an unqualified one is best only while none qualifies. An
improvement must exceed ``validation.min_improvement`` (score units). ``last`` always keeps the
latest validation as best (and early-stops on Δm). The best weights are written, with the same
atomic writer as every checkpoint, to ``RUN/checkpoints/best``.

Early stopping: after ``validation.early_stop_patience`` validations without improvement the run
ends cleanly (the loop saves its checkpoint as usual), logs why, and ``RUN/validation.json`` says so.

Drift alarm: see :class:`DriftDetector`. All state (history, reference, best, counters) is plain
data in :meth:`Validator.state_dict`, saved in ``train_state.pt`` and restored on resume.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from mmtl.checkpoint import BEST_NAME, checkpoint_meta, write_checkpoint
from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.evaluation.baselines import baseline_split_metrics, read_baselines
from mmtl.evaluation.delta import MetricRoles, delta_m
from mmtl.evaluation.evaluate import EvalOptions, EvalResult, evaluate
from mmtl.training.logging import RunLogger, plot_validation
from mmtl.training.loop import Trainer
from mmtl.training.protection import TaskProtection
from mmtl.training.state import rng_state, set_rng_state

log = logging.getLogger(__name__)

SUMMARY_FILE = "validation.json"


def relative_change(old: float, new: float) -> float:
    """(new - old) / |old|; the plain difference when ``old`` is 0 (only its sign is then meaningful)."""
    return (new - old) / abs(old) if old else new - old


class DriftDetector:
    """Flags a task whose primary metric keeps getting worse while the other tasks improve.

    At each validation after the first, every task's change is ``relative_change(previous, current)``
    of its primary metric, signed so that positive is better. Task t *drifts* at this validation
    when its change is < 0 and the mean change of the other tasks is > 0. A task whose drift lasted
    ``patience`` consecutive validations is in alarm until a validation where it does not drift.
    With fewer than two tasks nothing can drift.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.previous: dict[str, float] = {}
        self.streak: dict[str, int] = {}

    def update(self, primary: Mapping[str, float]) -> list[str]:
        """Feed one validation's signed primary metrics ({task: value, higher is better}); returns the tasks in alarm."""
        common = [t for t in primary if t in self.previous]
        changes = {t: relative_change(self.previous[t], primary[t]) for t in common}
        for task in primary:
            others = [c for o, c in changes.items() if o != task]
            drifting = task in changes and bool(others) and changes[task] < 0 and sum(others) / len(others) > 0
            self.streak[task] = self.streak.get(task, 0) + 1 if drifting else 0
        self.previous = dict(primary)
        return self.alarms()

    def alarms(self) -> list[str]:
        """Tasks whose drift streak has reached the patience (none when patience is 0)."""
        return [t for t, n in self.streak.items() if self.patience and n >= self.patience]

    def state_dict(self) -> dict[str, Any]:
        return {"previous": dict(self.previous), "streak": dict(self.streak)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous = {k: float(v) for k, v in state.get("previous", {}).items()}
        self.streak = {k: int(v) for k, v in state.get("streak", {}).items()}


@dataclass
class Scored:
    """One validation, scored: Δm against the reference (None when nothing is comparable yet),
    the tasks that regressed, and the selection score (higher is better; None: not scorable)."""

    step: int
    delta_m: float | None
    regressed: list[str]
    score: float | None

    @property
    def key(self) -> tuple[bool, float]:
        """Order of validations: qualified (no regression) first, then by score."""
        return (not self.regressed, -math.inf if self.score is None else self.score)


class Selector:
    """Scores validations against a reference, tracks the best one and the early-stopping patience."""

    def __init__(self, select: str, tolerance: float, min_improvement: float,
                 baseline: dict[str, dict[str, float]] | None = None) -> None:
        self.select, self.tolerance, self.min_improvement = select, tolerance, min_improvement
        self.fixed_reference = baseline is not None
        self.reference: dict[str, dict[str, float]] | None = baseline
        self.best: dict[str, Any] | None = None  # Scored fields of the best validation by the objective
        self.best_step: int | None = None  # the step whose weights are in checkpoints/best
        self.stale = 0  # validations since the objective last improved

    def score(self, step: int, metrics: dict[str, dict[str, float]], losses: Mapping[str, float],
              primary: Mapping[str, str], roles: MetricRoles) -> Scored:
        """Δm and regressions of ``metrics`` against the reference (set to ``metrics`` when there is none yet)."""
        if not self.fixed_reference:  # each metric's reference is its first non-zero value in the run
            self.reference = self.reference or {}
            for task, values in metrics.items():
                known = self.reference.setdefault(task, {})
                known.update({m: v for m, v in values.items() if v and not known.get(m)})
        try:  # Δm is None while every reference metric is 0 (e.g. an untrained model)
            report = delta_m(metrics, self.reference, primary, tolerance=self.tolerance, roles=roles)
            delta, regressed = report.delta_m, report.regressed
        except ValueError:  # no task in common with the reference: nothing comparable
            delta, regressed = None, []
        if self.select == "loss":
            score = -sum(losses.values()) if losses else None
        else:
            score = delta
        return Scored(step, delta, regressed, score)

    def update(self, scored: Scored) -> bool:
        """Record ``scored``; True when its weights become the best checkpoint."""
        objective = scored
        if self.select == "last":  # the best checkpoint is the latest; the objective for stopping is Δm
            objective = Scored(scored.step, scored.delta_m, scored.regressed, scored.delta_m)
        if self.best is None or self._better(objective, Scored(**self.best)):
            self.best, self.stale = dict(vars(objective)), 0
            improved = True
        else:
            self.stale += 1
            improved = False
        if self.select == "last" or improved:
            self.best_step = scored.step
            return True
        return False

    def _better(self, new: Scored, old: Scored) -> bool:
        if new.key[0] != old.key[0]:
            return new.key[0]
        if old.score is None:
            return new.score is not None
        return new.score is not None and new.score > old.score + self.min_improvement

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.fixed_reference:
            self.reference = state.get("reference")
        self.best, self.best_step, self.stale = state.get("best"), state.get("best_step"), int(state.get("stale", 0))


def baseline_metrics(path: str, split: str, max_samples: int = 0) -> dict[str, dict[str, float]]:
    """Per-task metrics on ``split`` from a ``baselines.json`` (MMTLError if it has none for that split).

    Warns when the baselines were scored on a different number of samples than ``max_samples``.
    """
    record = read_baselines(path)
    counted = record.get("split_max_samples", {}).get(split)
    if counted is not None and counted != max_samples:
        log.warning("%s scored split %r on max_samples=%s, validation uses %s: Δm compares different samples",
                    path, split, counted, max_samples)
    try:
        return baseline_split_metrics(record, split)[0]
    except MMTLError as exc:
        raise MMTLError(f"{path}: {exc}; rewrite it with the current `mmtl baselines`, which also evaluates on "
                        "data.val_split") from None


class Validator:
    """Periodic validation of a Trainer's model; see the module docstring for what it decides."""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        cfg = config.validation
        # protection needs validations: without train.eval_every it validates every steps // 8 steps
        self.every = config.train.eval_every or (max(1, config.train.steps // 8) if cfg.protect else 0)
        baseline = baseline_metrics(cfg.baselines, config.data.val_split, cfg.max_samples) \
            if cfg.baselines and self.every else None
        self.selector = Selector(cfg.select, cfg.tolerance, cfg.min_improvement, baseline)
        self.protection = TaskProtection(cfg.tolerance, cfg.protect_boost, cfg.protect_max) if cfg.protect else None
        self._baseline = baseline
        self.drift = DriftDetector(cfg.drift_patience)
        self.history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None

    def due(self, step: int) -> bool:
        """Whether the run validates after reaching ``step``."""
        return bool(self.every) and (step % self.every == 0 or step == self.config.train.steps)

    def after_step(self, trainer: Trainer, logger: RunLogger, progress: tqdm) -> None:
        """Called by the Trainer after every step: validates when due, keeps the drift alarm in the bar."""
        if self.due(trainer.step) and (not self.history or self.history[-1]["step"] != trainer.step):
            self.validate(trainer, logger)
        if self.protection is not None:
            trainer.task_scale = self.protection.factors
        alarms = self.drift.alarms()
        postfix = getattr(progress, "postfix", None)
        if self.protection is not None and self.protection.standings and isinstance(postfix, str) \
                and "vs reference" not in postfix:
            progress.set_postfix_str(f"{postfix}, vs reference: {self.protection.postfix()}", refresh=False)
        if alarms and isinstance(postfix, str) and "DRIFT" not in postfix:
            progress.set_postfix_str(f"{postfix}, DRIFT={'+'.join(alarms)}" if postfix else f"DRIFT={'+'.join(alarms)}",
                                     refresh=False)

    @torch.no_grad()
    def validate(self, trainer: Trainer, logger: RunLogger) -> Scored:
        """Evaluate on the val split, log, update the drift alarm, the best checkpoint and early stopping."""
        started, step, rng = time.perf_counter(), trainer.step, rng_state()
        ema = trainer.ema
        # with a weight average, validate what evaluation and inference will load: the average
        components = trainer.components if ema is None else dataclasses.replace(trainer.components, model=ema.module)
        was_training = components.model.training
        try:  # validation must not change the training's random stream (exact resume)
            result = evaluate(components, self.config, trainer.device, split=self.config.data.val_split,
                              max_samples=self.config.validation.max_samples,
                              options=EvalOptions(precision=trainer.precision, trivial_baselines=False, losses=True,
                                                 data_metrics=False))
        finally:
            set_rng_state(rng)
            components.model.train(was_training)
        roles = MetricRoles.of(t for t in trainer.components.tasks if t.name in result.metrics)
        lower = {t: tuple(roles.lower_is_better[t]) for t in result.metrics}
        scored = self.selector.score(step, result.metrics, result.losses, result.primary, roles)
        is_best = self.selector.update(scored)
        if is_best:
            self._write_best(trainer)
        signed = {t: (-1 if m in lower[t] else 1) * result.metrics[t][m] for t, m in result.primary.items()}
        alarms = self.drift.update(signed)
        record = _log_record(result, scored)
        if self.protection is not None:
            self._protect(signed, lower, result.primary)
            record.update(self.protection.log_record())
        record.update({"val/best_step": self.selector.best_step, "val/seconds": time.perf_counter() - started})
        logger.log(step, record)
        self.history.append({"step": step, "metrics": result.metrics, "losses": result.losses,
                             "delta_m": scored.delta_m, "regressed": scored.regressed, "score": scored.score,
                             "best": is_best})
        for task in alarms:
            metric = result.primary[task]
            self._warn(logger, step, "drift", f"drift alarm: {task} {metric} got worse for {self.drift.streak[task]} "
                       f"consecutive validations while the other tasks improved (now {result.metrics[task][metric]:.4f})",
                       task=task)
        patience = self.config.validation.early_stop_patience
        if patience and self.selector.stale >= patience and step < self.config.train.steps:
            best = self.selector.best or {}
            what = "validation loss" if self.config.validation.select == "loss" else "Δm"
            self.stop_reason = (f"early stop at step {step}: {what} has not improved for {self.selector.stale} "
                                f"validations (best at step {best.get('step')}, Δm {_percent(best.get('delta_m'))})")
            self._warn(logger, step, "early_stop", self.stop_reason)
        return scored

    def _protect(self, signed: Mapping[str, float], lower: Mapping[str, Any], primary: Mapping[str, str]) -> None:
        """Update the "no task left behind" factors from this validation's signed primary metrics."""
        assert self.protection is not None
        if self._baseline is not None and self.protection.references is None:
            self.protection.references = {t: (-1 if primary[t] in lower[t] else 1) * self._baseline[t][primary[t]]
                                          for t in signed if primary[t] in self._baseline.get(t, {})}
        for task, standing in self.protection.update(signed).items():
            if standing.behind:
                log.info("protect: %s is %.1f%% behind its reference, loss factor now %g", task,
                         -100 * (standing.change or 0.0), self.protection.factors[task])

    def _warn(self, logger: RunLogger, step: int, kind: str, message: str, **extra: Any) -> None:
        logger.log(step, {"warning": message, "warning_kind": kind, **extra})
        log.warning(message)

    def _write_best(self, trainer: Trainer) -> None:
        ema = trainer.ema
        write_checkpoint(self.run_dir / "checkpoints" / BEST_NAME, model=trainer.model,
                         meta={**checkpoint_meta(trainer.components, trainer.step), "selected_by": self.config.validation.select},
                         config=self.config, **({"ema": ema.module} if ema is not None else {}))

    def finish(self, log_path: Path) -> Path | None:
        """Write ``RUN/validation.json`` (history, best step, stop reason) and the val plot; None when validation is off."""
        if not self.history:
            return None
        summary = {"select": self.config.validation.select, "best_step": self.selector.best_step,
                   "best": self.selector.best, "stop_reason": self.stop_reason,
                   "best_checkpoint": str(self.run_dir / "checkpoints" / BEST_NAME), "history": self.history}
        if self.protection is not None:
            summary["protection"] = {"against": "single-task baselines" if self._baseline else "own best validation",
                                     "tasks": self.protection.verdicts()}
        path = self.run_dir / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2))
        plot_validation(log_path, self.run_dir)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Plain data (loadable with ``torch.load(weights_only=True)``)."""
        state = {"history": self.history, "selector": self.selector.state_dict(), "drift": self.drift.state_dict()}
        if self.protection is not None:
            state["protection"] = self.protection.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; an early stop is not restored, so a resumed run trains on."""
        self.history = list(state.get("history", []))
        self.selector.load_state_dict(state.get("selector", {}))
        self.drift.load_state_dict(state.get("drift", {}))
        if self.protection is not None:
            self.protection.load_state_dict(state.get("protection", {}))


def _log_record(result: EvalResult, scored: Scored) -> dict[str, Any]:
    """``val/<task>/<metric>`` (all sources pooled), ``val_source/<source>/<task>/<metric>`` with several
    sources, the losses, Δm and the number of regressed tasks of one validation."""
    record: dict[str, Any] = {f"val/{t}/{m}": v for t, ms in result.metrics.items() for m, v in ms.items()}
    if len(result.sources) > 1:
        record.update({f"val_source/{source}/{t}/{m}": v for source, part in result.sources.items()
                       for t, ms in part["model"].items() for m, v in ms.items()})
    record.update({f"val/{t}/loss": v for t, v in result.losses.items()})
    if result.losses:
        record["val/loss"] = sum(result.losses.values())
    if scored.delta_m is not None:
        record["val/delta_m"] = scored.delta_m
    record["val/regressed"] = len(scored.regressed)
    return record


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}%"
