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

Honest Δm. Given the trivial baselines' metrics on the same split (``trivial``), a metric whose
single-task value is not better than its trivial baseline's is shown apart and left out of Δm: a
reference that did not learn makes any relative change against it meaningless (a CIDEr of 0.0003
turned 0.004 into +1,300%). A task's *diagnostic* metrics (``diagnostic``: distinct-2, repetition,
unique outputs) describe how degenerate its outputs are, not how good: they are reported, never in
Δm, where a constant short output ("a table .", no repeated word) would score as an improvement.
Its *collapse* metrics (``collapse``) decide the ``COLLAPSED`` verdict instead: a task whose outputs
have under ``COLLAPSE_FRACTION`` of its single-task model's diversity on any of them has collapsed,
whatever its primary metric says.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Iterable, Mapping

Metrics = Mapping[str, Mapping[str, float]]
NUMERICAL_ZERO = 1e-6  # every metric here lies in [0, 1] or [0, 100]: a smaller baseline is 0
COLLAPSE_FRACTION = 0.5  # diversity under half the single-task model's: the outputs have collapsed
ZERO_BASELINE, UNLEARNED, DIAGNOSTIC = "baseline 0", "reference did not learn", "diagnostic"

DEFINITION = ("Δm = mean over tasks (each task weighs the same) of the mean over the task's metrics of "
              "(-1)^l (multi-task - single-task) / single-task, l = 1 where lower is better; a metric whose "
              "single-task value is 0, or not better than its trivial baseline, has no relative change and is shown "
              "apart (absolute difference); diagnostic metrics (output diversity) are never in Δm")


@dataclass
class MetricChange:
    """One metric of one task: both values, the signed relative change (None: baseline 0), direction."""

    task: str
    metric: str
    model: float
    baseline: float
    change: float | None
    lower_is_better: bool = False
    excluded: str | None = None  # why it is not in Δm: ZERO_BASELINE, UNLEARNED or DIAGNOSTIC
    trivial: float | None = None  # the trivial baseline's value on the same split, when known

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
        return [f"{m.task}/{m.metric}" for m in self.metrics if m.excluded == ZERO_BASELINE]

    @property
    def unlearned(self) -> list[str]:
        """``task/metric`` of every metric whose single-task model did not beat its trivial baseline."""
        return [f"{m.task}/{m.metric}" for m in self.metrics if m.excluded == UNLEARNED]

    @property
    def collapsed(self) -> list[str]:
        """The tasks whose outputs collapsed against their single-task model's."""
        return [t for t, v in self.verdicts.items() if v.get("collapsed")]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {"definition": DEFINITION, "delta_m": self.delta_m, "per_task": self.per_task,
                "verdicts": self.verdicts, "tolerance": self.tolerance, "no_regression": self.no_regression,
                "regressed": self.regressed, "metrics": [asdict(m) for m in self.metrics],
                "zero_baseline": self.zero_baseline, "unlearned": self.unlearned, "collapsed": self.collapsed,
                "missing_tasks": self.missing_tasks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeltaReport":
        """Inverse of :meth:`to_dict`."""
        return cls(data["delta_m"], dict(data["per_task"]), dict(data["verdicts"]), float(data["tolerance"]),
                   [MetricChange(**m) for m in data.get("metrics", [])], list(data.get("missing_tasks", [])))


def signed_change(model: float, baseline: float, lower_is_better: bool) -> float:
    """(-1)^l (model - baseline) / baseline: positive means the model is better."""
    change = (model - baseline) / baseline
    return -change if lower_is_better else change


@dataclass(frozen=True)
class MetricRoles:
    """What each task's metrics mean for Δm: ``{task: metric names}`` where lower is better, that only
    diagnose degeneration (never in Δm), and whose collapse against the single-task model is a verdict."""

    lower_is_better: Mapping[str, Collection[str]] = field(default_factory=dict)
    diagnostic: Mapping[str, Collection[str]] = field(default_factory=dict)
    collapse: Mapping[str, Collection[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, tasks: Iterable[Any]) -> "MetricRoles":
        """The roles the tasks declare (``lower_is_better``, ``diagnostic_metrics``, ``collapse_metrics``)."""
        tasks = list(tasks)
        return cls({t.name: tuple(getattr(t, "lower_is_better", ())) for t in tasks},
                   {t.name: tuple(getattr(t, "diagnostic_metrics", ())) for t in tasks},
                   {t.name: tuple(getattr(t, "collapse_metrics", ())) for t in tasks})


def _excluded(base: float, lower: bool, trivial: float | None, diagnostic: bool) -> str | None:
    """Why a metric stays out of Δm (None: it is in)."""
    if diagnostic:
        return DIAGNOSTIC
    if abs(base) < NUMERICAL_ZERO:
        return ZERO_BASELINE
    if trivial is not None and ((base >= trivial) if lower else (base <= trivial)):
        return UNLEARNED
    return None


def metric_changes(task: str, model: Mapping[str, float], baseline: Mapping[str, float],
                   lower: Collection[str], trivial: Mapping[str, float] | None = None,
                   diagnostic: Collection[str] = ()) -> list[MetricChange]:
    """Every metric both have, with its signed relative change; None (and the reason in ``excluded``)
    where the baseline is 0, did not beat ``trivial``, or the metric is diagnostic."""
    out = []
    trivial = trivial or {}
    for metric, value in model.items():
        if metric not in baseline:
            continue
        base, known = float(baseline[metric]), trivial.get(metric)
        known = None if known is None else float(known)
        excluded = _excluded(base, metric in lower, known, metric in diagnostic)
        change = None if excluded else signed_change(float(value), base, metric in lower)
        out.append(MetricChange(task, metric, float(value), base, change, metric in lower, excluded, known))
    return out


def verdict(change: MetricChange, tolerance: float, collapsed: list[str] | None = None) -> dict[str, Any]:
    """The verdict of a task's primary metric: regressed beyond ``tolerance`` (absolute when it has no
    relative change), or ``collapsed`` (the task's collapse metrics that fell under COLLAPSE_FRACTION)."""
    ok = change.change >= -tolerance if change.change is not None else change.signed_difference > -NUMERICAL_ZERO
    out = {"metric": change.metric, "model": change.model, "baseline": change.baseline, "change": change.change,
           "ok": ok and not collapsed}
    if change.excluded == UNLEARNED:
        out["unlearned"] = True
    if collapsed:
        out["collapsed"] = collapsed
    return out


def collapsed_metrics(changes: list[MetricChange], collapse: Collection[str]) -> list[str]:
    """The collapse metrics (higher: more diverse) under COLLAPSE_FRACTION of the single-task model's."""
    return [c.metric for c in changes if c.metric in collapse and c.baseline > NUMERICAL_ZERO
            and c.model < COLLAPSE_FRACTION * c.baseline]


def delta_m(model: Metrics, baseline: Metrics, primary: Mapping[str, str],
            lower_is_better: Mapping[str, Collection[str]] | None = None, tolerance: float = 0.0,
            trivial: Metrics | None = None, roles: MetricRoles | None = None) -> DeltaReport:
    """Δm of ``model`` against ``baseline`` ({task: {metric: value}}) over the tasks both have.

    ``trivial``: the trivial baselines' metrics on the same split (a reference not better than its
    trivial baseline stays out of Δm); ``roles``: diagnostic and collapse metrics (and lower-is-better,
    merged with ``lower_is_better``). ``delta_m`` is None when no metric of any common task has a
    relative change (Δm undefined; the verdicts still stand). Raises ValueError when the two share no task.
    """
    roles = roles or MetricRoles()
    lower = {**roles.lower_is_better, **(lower_is_better or {})}
    per_task: dict[str, float] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    rows: list[MetricChange] = []
    for task in [t for t in model if t in baseline]:
        changes = metric_changes(task, model[task], baseline[task], set(lower.get(task, ())),
                                 (trivial or {}).get(task), set(roles.diagnostic.get(task, ())))
        rows += changes
        relative = [c.change for c in changes if c.change is not None]
        if relative:
            per_task[task] = sum(relative) / len(relative)
        by_metric = {c.metric: c for c in changes}
        if primary.get(task) in by_metric:
            collapsed = collapsed_metrics(changes, roles.collapse.get(task, ()))
            verdicts[task] = verdict(by_metric[primary[task]], tolerance, collapsed)
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


def _verdict_word(v: Mapping[str, Any], tolerance: float) -> str:
    if v.get("collapsed"):
        return f"COLLAPSED ({', '.join(v['collapsed'])} under {COLLAPSE_FRACTION:.0%} of the single-task model's)"
    if v.get("unlearned"):
        return "ok (single-task model did not learn)" if v["ok"] else "REGRESSED (single-task model did not learn)"
    if v["ok"]:
        return "ok"
    if v["change"] is None:
        return "REGRESSED (below a baseline of 0)"
    return f"REGRESSED (fell more than {100 * tolerance:.1f}%)"


def format_verdicts(report: DeltaReport) -> list[str]:
    """The per-task verdict table (primary metric against the single-task model, with the tolerance)."""
    rows = [("task", "primary metric", "multi-task", "single-task", "change", "verdict")]
    for task, v in report.verdicts.items():
        rows.append((task, v["metric"], f"{v['model']:.3f}", f"{v['baseline']:.3f}", _percent(v["change"]),
                     _verdict_word(v, report.tolerance)))
    for task in report.missing_tasks:
        rows.append((task, "-", "-", "-", "-", "NO SINGLE-TASK MODEL (not in Δm)"))
    return _table(rows)


def _change_cell(m: MetricChange) -> str:
    if m.change is not None:
        return _percent(m.change)
    if m.excluded == DIAGNOSTIC:
        return f"diagnostic, not in Δm (difference {m.signed_difference:+.3f})"
    if m.excluded == UNLEARNED:
        return f"n/a (single-task not better than trivial {m.trivial:.3f}; not in Δm)"
    return f"n/a (baseline 0; difference {m.signed_difference:+.3f}, not in Δm)"


def format_delta(report: DeltaReport, definition: bool = True) -> str:
    """Every metric's change, the per-task verdicts, then Δm with each task's share (and its definition)."""
    rows = [("task", "metric", "multi-task", "single-task", "relative change")]
    for m in report.metrics:
        rows.append((m.task, m.metric + (" (lower is better)" if m.lower_is_better else ""), f"{m.model:.3f}",
                     f"{m.baseline:.3f}", _change_cell(m)))
    lines = _table(rows) + [""] + format_verdicts(report) + [""]
    per_task = ", ".join(f"{t} {_percent(c)}" for t, c in report.per_task.items())
    if report.delta_m is None:
        lines.append("Δm = n/a: no metric has a relative change (every single-task value is 0 or did not beat "
                     "its trivial baseline; the verdicts stand)")
    else:
        lines.append(f"Δm = {_percent(report.delta_m)} over {len(report.per_task)} task(s): {per_task}")
    if report.unlearned:
        lines.append(f"WARNING: the single-task model did not beat its trivial baseline on {', '.join(report.unlearned)}"
                     ": a change against it means nothing, so Δm leaves it out (train the single-task model longer)")
    if report.missing_tasks:
        lines.append(f"Δm leaves out {', '.join(report.missing_tasks)}: no single-task model in the baselines")
    if report.collapsed:
        lines.append(f"COLLAPSED: {', '.join(report.collapsed)} (its outputs lost their diversity)")
    lines.append("no task regressed" if report.no_regression else
                 f"REGRESSED beyond the tolerance ({100 * report.tolerance:.1f}%): {', '.join(report.regressed)}")
    if definition:
        lines.append(DEFINITION)
    return "\n".join(lines)
