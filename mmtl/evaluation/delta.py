"""Δm: how a multi-task model compares with single-task baselines, task by task.

Δm = (1/T) Σ_t (1/|M_t|) Σ_{m ∈ M_t} (-1)^{l_m} (M_mt,m - M_st,m) / M_st,m, with l_m = 1 where lower
is better (Maninis et al., CVPR 2019; Vandenhende et al., TPAMI 2021): each task's metrics are
averaged first, so each task weighs the same however many metrics it reports. A metric whose
single-task value is 0 has no relative change: it is still reported (both values and the absolute
difference) but cannot enter its task's mean. A baseline within ``NUMERICAL_ZERO`` of 0 counts as 0:
such values are floating-point residue (CIDEr-D of degenerate captions scores ~1e-8), and dividing by
them would turn any real score into a change of millions of percent that swamps Δm. Beside Δm every task gets a verdict on its primary
metric: it *regressed* when its signed relative change is below ``-tolerance`` (or, with a baseline
of 0, when the multi-task value is worse at all). A task of the model without a single-task model
is listed as missing, never silently left out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Mapping

Metrics = Mapping[str, Mapping[str, float]]
NUMERICAL_ZERO = 1e-6  # every metric here lies in [0, 1] or [0, 100]: a smaller baseline is 0

DEFINITION = ("Δm = mean over tasks (each task weighs the same) of the mean over the task's metrics of "
              "(-1)^l (multi-task - single-task) / single-task, l = 1 where lower is better; a metric whose "
              "single-task value is 0 has no relative change and is shown apart (absolute difference)")


@dataclass
class MetricChange:
    """One metric of one task: both values, the signed relative change (None: baseline 0), direction."""

    task: str
    metric: str
    model: float
    baseline: float
    change: float | None
    lower_is_better: bool = False

    @property
    def signed_difference(self) -> float:
        """model - baseline, negated where lower is better: positive means the model is better."""
        difference = self.model - self.baseline
        return -difference if self.lower_is_better else difference


@dataclass
class DeltaReport:
    """Δm, each task's mean signed relative change, every metric's change and the per-task verdicts."""

    delta_m: float | None
    per_task: dict[str, float]
    verdicts: dict[str, dict[str, Any]]
    tolerance: float
    metrics: list[MetricChange] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)  # model tasks without a single-task model

    @property
    def no_regression(self) -> bool:
        """True when no task's primary metric fell by more than the tolerance."""
        return all(v["ok"] for v in self.verdicts.values())

    @property
    def regressed(self) -> list[str]:
        """The tasks whose primary metric fell by more than the tolerance."""
        return [t for t, v in self.verdicts.items() if not v["ok"]]

    @property
    def zero_baseline(self) -> list[str]:
        """``task/metric`` of every metric whose single-task value is 0 (reported, not in Δm)."""
        return [f"{m.task}/{m.metric}" for m in self.metrics if m.change is None]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {"definition": DEFINITION, "delta_m": self.delta_m, "per_task": self.per_task,
                "verdicts": self.verdicts, "tolerance": self.tolerance, "no_regression": self.no_regression,
                "regressed": self.regressed, "metrics": [asdict(m) for m in self.metrics],
                "zero_baseline": self.zero_baseline, "missing_tasks": self.missing_tasks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeltaReport":
        """Inverse of :meth:`to_dict`."""
        return cls(data["delta_m"], dict(data["per_task"]), dict(data["verdicts"]), float(data["tolerance"]),
                   [MetricChange(**m) for m in data.get("metrics", [])], list(data.get("missing_tasks", [])))


def signed_change(model: float, baseline: float, lower_is_better: bool) -> float:
    """(-1)^l (model - baseline) / baseline: positive means the model is better."""
    change = (model - baseline) / baseline
    return -change if lower_is_better else change


def metric_changes(task: str, model: Mapping[str, float], baseline: Mapping[str, float],
                   lower: Collection[str]) -> list[MetricChange]:
    """Every metric both have, with its signed relative change (None where the baseline is 0, i.e. below
    ``NUMERICAL_ZERO``)."""
    out = []
    for metric, value in model.items():
        if metric not in baseline:
            continue
        base = float(baseline[metric])
        change = None if abs(base) < NUMERICAL_ZERO else signed_change(float(value), base, metric in lower)
        out.append(MetricChange(task, metric, float(value), base, change, metric in lower))
    return out


def verdict(change: MetricChange, tolerance: float) -> dict[str, Any]:
    """The non-regression verdict of a task's primary metric (absolute when the baseline is 0)."""
    ok = change.change >= -tolerance if change.change is not None else change.signed_difference > -NUMERICAL_ZERO
    return {"metric": change.metric, "model": change.model, "baseline": change.baseline, "change": change.change,
            "ok": ok}


def delta_m(model: Metrics, baseline: Metrics, primary: Mapping[str, str],
            lower_is_better: Mapping[str, Collection[str]] | None = None, tolerance: float = 0.0) -> DeltaReport:
    """Δm of ``model`` against ``baseline`` ({task: {metric: value}}) over the tasks both have.

    ``delta_m`` is None when no metric of any common task has a non-zero baseline (Δm undefined;
    the verdicts still stand). Raises ValueError when the two share no task.
    """
    lower_is_better = lower_is_better or {}
    per_task: dict[str, float] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    rows: list[MetricChange] = []
    for task in [t for t in model if t in baseline]:
        changes = metric_changes(task, model[task], baseline[task], set(lower_is_better.get(task, ())))
        rows += changes
        relative = [c.change for c in changes if c.change is not None]
        if relative:
            per_task[task] = sum(relative) / len(relative)
        by_metric = {c.metric: c for c in changes}
        if primary.get(task) in by_metric:
            verdicts[task] = verdict(by_metric[primary[task]], tolerance)
    if not rows:
        raise ValueError("no task metric is shared by the model and the baselines")
    missing = [t for t in model if t not in baseline]
    mean = sum(per_task.values()) / len(per_task) if per_task else None
    return DeltaReport(mean, per_task, verdicts, tolerance, rows, missing)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_verdicts(report: DeltaReport) -> list[str]:
    """The per-task verdict table (primary metric against the single-task model, with the tolerance)."""
    rows = [("task", "primary metric", "multi-task", "single-task", "change", "verdict")]
    for task, v in report.verdicts.items():
        if v["ok"]:
            word = "ok"
        elif v["change"] is None:
            word = "REGRESSED (below a baseline of 0)"
        else:
            word = f"REGRESSED (fell more than {100 * report.tolerance:.1f}%)"
        rows.append((task, v["metric"], f"{v['model']:.3f}", f"{v['baseline']:.3f}", _percent(v["change"]), word))
    for task in report.missing_tasks:
        rows.append((task, "-", "-", "-", "-", "NO SINGLE-TASK MODEL (not in Δm)"))
    return _table(rows)


def format_delta(report: DeltaReport, definition: bool = True) -> str:
    """Every metric's change, the per-task verdicts, then Δm with each task's share (and its definition)."""
    rows = [("task", "metric", "multi-task", "single-task", "relative change")]
    for m in report.metrics:
        change = _percent(m.change) if m.change is not None else \
            f"n/a (baseline 0; difference {m.signed_difference:+.3f}, not in Δm)"
        rows.append((m.task, m.metric + (" (lower is better)" if m.lower_is_better else ""), f"{m.model:.3f}",
                     f"{m.baseline:.3f}", change))
    lines = _table(rows) + [""] + format_verdicts(report) + [""]
    per_task = ", ".join(f"{t} {_percent(c)}" for t, c in report.per_task.items())
    if report.delta_m is None:
        lines.append("Δm = n/a: every baseline value is 0, so no relative change exists (the verdicts stand)")
    else:
        lines.append(f"Δm = {_percent(report.delta_m)} over {len(report.per_task)} task(s): {per_task}")
    if report.missing_tasks:
        lines.append(f"Δm leaves out {', '.join(report.missing_tasks)}: no single-task model in the baselines")
    lines.append("no task regressed" if report.no_regression else
                 f"REGRESSED beyond the tolerance ({100 * report.tolerance:.1f}%): {', '.join(report.regressed)}")
    if definition:
        lines.append(DEFINITION)
    return "\n".join(lines)
