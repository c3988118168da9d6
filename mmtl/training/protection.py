""""No task left behind": validation-driven protection of the tasks that fall behind their reference.

With ``validation.protect=true`` every validation compares each task's primary metric on the val
split with a *reference*:

- the task's single-task model (``validation.baselines``, a ``baselines.json`` from ``mmtl
  baselines``) when given: the task is *behind* while it lies more than ``validation.tolerance``
  (relative) below its single-task model;
- otherwise the task's own best validation so far: the task is *behind* while it lies more than
  the tolerance below its best, i.e. while it gets worse (the drift the validation log shows).

The rule: each task carries a loss factor, 1 at the start. At every validation a task that is behind
has its factor multiplied by ``validation.protect_boost`` (at most ``validation.protect_max``); a
task that is not behind has it divided by the boost (at least 1); then every factor is divided by the
smallest, because a factor every task shares protects none. The trainer multiplies each task's
loss by its factor before the balancer combines them, so with any balancer a lagging task's share of
the shared parameters' update grows until it catches up, then returns to normal. Factors are plain
data: logged (``protect/<task>``), shown in the progress bar with each task's standing, saved with
the run's state and restored on resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class Standing:
    """One task at one validation: its primary metric (signed: higher is better), the reference, the
    relative change against it and whether the task is behind."""

    value: float
    reference: float | None
    change: float | None
    behind: bool


@dataclass
class TaskProtection:
    """The loss factors of the "no task left behind" rule (see the module docstring)."""

    tolerance: float
    boost: float
    max_factor: float
    references: dict[str, float] | None = None  # signed single-task metrics; None: each task's own best
    factors: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    standings: dict[str, Standing] = field(default_factory=dict)

    def reference_of(self, task: str) -> float | None:
        """The value ``task`` is measured against: its single-task model's, or its own best so far."""
        if self.references is not None:
            return self.references.get(task)
        return self.best.get(task)

    def update(self, signed: Mapping[str, float]) -> dict[str, Standing]:
        """Feed one validation's primary metrics ({task: value, higher is better}); returns each task's standing."""
        standings = {}
        for task, value in signed.items():
            reference = self.reference_of(task)
            change = None if not reference else (value - reference) / abs(reference)
            behind = change is not None and change < -self.tolerance
            factor = self.factors.get(task, 1.0)
            self.factors[task] = min(self.max_factor, factor * self.boost) if behind else max(1.0, factor / self.boost)
            standings[task] = Standing(value, reference, change, behind)
            self.best[task] = max(value, self.best.get(task, value))
        self._keep_relative()
        self.standings = standings
        return standings

    def _keep_relative(self) -> None:
        """Divide every factor by the smallest, so the least protected task has factor 1.

        A factor every task shares is no protection: early in a run every task lies below its single-task
        model, and multiplying every loss by the same number changes no task's share of the update (AdamW
        normalises a common scale away). Kept relative, only the tasks behind more than others gain."""
        lowest = min(self.factors.values(), default=1.0)
        if lowest > 1.0:
            self.factors = {task: factor / lowest for task, factor in self.factors.items()}

    def scale(self, losses: Mapping[str, Any]) -> dict[str, Any]:
        """``losses`` with each task's loss multiplied by its factor (tasks without one unchanged)."""
        return {name: loss * self.factors[name] if self.factors.get(name, 1.0) != 1.0 else loss
                for name, loss in losses.items()}

    def postfix(self) -> str:
        """Each task's standing for the progress bar, e.g. ``captioning -3.1% x4`` (x: its factor)."""
        parts = []
        for task, s in self.standings.items():
            change = "n/a" if s.change is None else f"{100 * s.change:+.1f}%"
            factor = self.factors.get(task, 1.0)
            parts.append(f"{task} {change}" + (f" x{factor:g}" if factor != 1.0 else ""))
        return ", ".join(parts)

    def log_record(self) -> dict[str, float]:
        """``protect/<task>`` factors and ``standing/<task>`` relative changes for the run log."""
        record = {f"protect/{t}": f for t, f in self.factors.items()}
        record.update({f"standing/{t}": s.change for t, s in self.standings.items() if s.change is not None})
        return record

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """The last validation's standing of every task, with its factor (plain data for validation.json)."""
        return {t: {"value": s.value, "reference": s.reference, "change": s.change, "behind": s.behind,
                    "factor": self.factors.get(t, 1.0)} for t, s in self.standings.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain data (saved with the run's state)."""
        return {"factors": dict(self.factors), "best": dict(self.best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.factors = {k: float(v) for k, v in state.get("factors", {}).items()}
        self.best = {k: float(v) for k, v in state.get("best", {}).items()}


def format_verdicts(verdicts: Mapping[str, Mapping[str, Any]], against: str) -> str:
    """The run's closing verdict table: each task's last validation against its reference (``against``)."""
    rows = [("task", "primary (val)", f"reference ({against})", "change", "loss factor", "verdict")]
    for task, v in verdicts.items():
        reference = "-" if v["reference"] is None else f"{abs(v['reference']):.3f}"
        change = "n/a" if v["change"] is None else f"{100 * v['change']:+.1f}%"
        rows.append((task, f"{abs(v['value']):.3f}", reference, change, f"{v['factor']:g}",
                     "BEHIND" if v["behind"] else "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
