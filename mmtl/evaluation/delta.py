"""Δm: how a multi-task model compares with single-task baselines over every task metric.

Δm = mean over tasks of the mean over the task's metrics of (-1)^l (M_mt - M_st) / M_st, where
l = 1 for a metric where lower is better (Maninis et al., CVPR 2019; Vandenhende et al., TPAMI
2021). Averaging within a task first lets each task count once, however many metrics it reports.
A metric whose baseline is 0 has no relative change and is left out (and listed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

Metrics = Mapping[str, Mapping[str, float]]


@dataclass
class DeltaReport:
    """Δm, each task's mean signed relative change, and the per-task non-regression verdicts."""

    delta_m: float
    per_task: dict[str, float]
    verdicts: dict[str, dict[str, Any]]
    tolerance: float
    skipped: list[str] = field(default_factory=list)

    @property
    def no_regression(self) -> bool:
        """True when no task's primary metric fell by more than the tolerance."""
        return all(v["ok"] for v in self.verdicts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"delta_m": self.delta_m, "per_task": self.per_task, "verdicts": self.verdicts,
                "tolerance": self.tolerance, "no_regression": self.no_regression, "skipped": self.skipped}


def signed_change(model: float, baseline: float, lower_is_better: bool) -> float:
    """(-1)^l (model - baseline) / baseline: positive means the model is better."""
    change = (model - baseline) / baseline
    return -change if lower_is_better else change


def delta_m(model: Metrics, baseline: Metrics, primary: Mapping[str, str],
            lower_is_better: Mapping[str, Collection[str]] | None = None, tolerance: float = 0.0) -> DeltaReport:
    """Δm of ``model`` against ``baseline`` ({task: {metric: value}}) over the tasks both have.

    A task regresses when its ``primary`` metric's signed relative change is below ``-tolerance``.
    """
    lower_is_better = lower_is_better or {}
    per_task, verdicts, skipped = {}, {}, []
    for task in [t for t in model if t in baseline]:
        lower = set(lower_is_better.get(task, ()))
        changes = {}
        for metric, value in model[task].items():
            if metric not in baseline[task]:
                continue
            if baseline[task][metric] == 0:
                skipped.append(f"{task}/{metric}")
                continue
            changes[metric] = signed_change(value, baseline[task][metric], metric in lower)
        if not changes:
            continue
        per_task[task] = sum(changes.values()) / len(changes)
        metric = primary.get(task)
        if metric in changes:
            verdicts[task] = {"metric": metric, "model": model[task][metric], "baseline": baseline[task][metric],
                              "change": changes[metric], "ok": changes[metric] >= -tolerance}
    if not per_task:
        raise ValueError("no task metric is shared by the model and the baselines")
    return DeltaReport(sum(per_task.values()) / len(per_task), per_task, verdicts, tolerance, skipped)


def format_delta(report: DeltaReport) -> str:
    """Plain-text Δm line, per-task changes and verdicts."""
    rows = [("task", "metric", "multi-task", "single-task", "change", "verdict")]
    for task, v in report.verdicts.items():
        rows.append((task, v["metric"], f"{v['model']:.3f}", f"{v['baseline']:.3f}", f"{100 * v['change']:+.1f}%",
                     "ok" if v["ok"] else f"REGRESSED (> {100 * report.tolerance:.1f}%)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    per_task = ", ".join(f"{t} {100 * c:+.1f}%" for t, c in report.per_task.items())
    lines.append(f"Δm = {100 * report.delta_m:+.2f}% (mean over tasks of all their metrics: {per_task})")
    lines.append("no task regressed" if report.no_regression else "at least one task regressed beyond the tolerance")
    if report.skipped:
        lines.append(f"left out (baseline is 0): {', '.join(report.skipped)}")
    return "\n".join(lines)
