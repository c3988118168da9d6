"""What the Python API returns (:mod:`mmtl.api`): plain result objects, never printed tables.

Each holds the numbers, the folders it wrote, and ``to_dict()`` (JSON-ready); ``table()`` renders
the same text the command line prints, for a notebook cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtl.builder import Components
from mmtl.evaluation.delta import DeltaReport, format_delta
from mmtl.evaluation.evaluate import EvalResult, format_table
from mmtl.training.protection import format_verdicts


@dataclass
class TrainRun:
    """A finished training run (``mmtl.train``)."""

    run_dir: Path  # the run folder: checkpoints/, config.yaml, log.jsonl, plots, README.md (the model card)
    checkpoint: Path  # the final checkpoint directory
    final_losses: dict[str, float]  # each task's training loss at the last logged step
    seconds: float  # the whole run
    components: Components  # the trained model, its tasks and vocabulary (in memory)
    validation: dict[str, Any] | None = None  # RUN/validation.json when the run validated
    card: Path | None = None  # RUN/README.md

    @property
    def best_checkpoint(self) -> Path | None:
        """The best validation's checkpoint (``checkpoints/best``), when the run validated."""
        if not self.validation:
            return None
        return Path(self.validation["best_checkpoint"])

    @property
    def verdicts(self) -> dict[str, dict[str, Any]]:
        """With ``validation.protect``: each task's last validation against its reference ("behind" or not)."""
        return dict((self.validation or {}).get("protection", {}).get("tasks", {}))

    def table(self) -> str:
        """The closing verdict table of ``validation.protect`` (empty without it)."""
        protection = (self.validation or {}).get("protection")
        return format_verdicts(protection["tasks"], protection["against"]) if protection else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "final_losses": self.final_losses,
                "seconds": self.seconds, "validation": self.validation, "card": str(self.card) if self.card else None}


@dataclass
class Evaluation:
    """A checkpoint's held-out metrics next to the trivial baselines and, when given, the single-task models."""

    checkpoint: Path
    result: EvalResult  # per-task and per-source metrics, the trivial baselines' and example predictions
    comparison: dict[str, Any] | None = None  # against the single-task models: Δm, verdicts, savings

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} of the model (all sources pooled)."""
        return self.result.metrics

    @property
    def trivial(self) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} of each task's trivial baseline (majority class, most frequent text...)."""
        return self.result.baselines

    @property
    def primary(self) -> dict[str, str]:
        """Each task's primary metric."""
        return self.result.primary

    @property
    def delta(self) -> DeltaReport | None:
        """Δm and per-task verdicts against the single-task models (None without ``baselines``)."""
        return DeltaReport.from_dict(self.comparison) if self.comparison else None

    @property
    def delta_m(self) -> float | None:
        """Δm against the single-task models (None without baselines, or when undefined)."""
        return self.comparison.get("delta_m") if self.comparison else None

    @property
    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Per task: its primary metric, whether it beats the trivial baseline and, with single-task
        models, ``vs_single_task`` ("ok" or "regressed") with the relative change."""
        out: dict[str, dict[str, Any]] = {}
        against = (self.comparison or {}).get("verdicts", {})
        for task, metric in self.primary.items():
            value, trivial = self.metrics[task][metric], self.trivial.get(task, {}).get(metric)
            verdict: dict[str, Any] = {"metric": metric, "value": value, "trivial": trivial,
                                       "beats_trivial": None if trivial is None else value > trivial}
            if task in against:
                verdict.update(vs_single_task="ok" if against[task]["ok"] else "regressed",
                               change=against[task].get("change"))
            out[task] = verdict
        return out

    def table(self) -> str:
        """The metric table of ``mmtl eval`` and, with single-task models, the Δm table."""
        text = format_table(self.result)
        delta = self.delta
        return text if delta is None else f"{text}\n\n{format_delta(delta)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON): what ``mmtl eval --output`` writes."""
        out = self.result.to_dict()
        if self.comparison is not None:
            out["delta"] = self.comparison
        return out


@dataclass
class BaselinesRun:
    """The single-task models of a config (``mmtl.baselines``)."""

    path: Path  # OUT/baselines.json: pass it to ``mmtl.evaluate(..., baselines=...)``
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} of each single-task model on the evaluation split."""
        return {task: entry["metrics"] for task, entry in self.record.get("tasks", {}).items()}

    @property
    def runs(self) -> dict[str, Path]:
        """Each task's single-task run folder."""
        return {task: Path(entry["run"]) for task, entry in self.record.get("tasks", {}).items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON): the ``baselines.json`` record."""
        return dict(self.record)
