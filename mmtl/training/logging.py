"""Run logs: a per-step JSONL file (always), the trackers of ``train.loggers``, and PNG plots at the end."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol, Sequence

from mmtl.config import ExperimentConfig
from mmtl.training.protection import format_verdicts
from mmtl.training.trackers import Row, Tracker, open_trackers

LOG_FILE = "log.jsonl"
log = logging.getLogger(__name__)


class RunLogger:
    """Appends one JSON record per logged step and passes its numbers to every tracker
    (``loggers``: the names of ``train.loggers``; see :mod:`mmtl.training.trackers`; ``resume``: a resumed
    training, which continues the trackers' runs)."""

    def __init__(self, run_dir: Path, loggers: Sequence[str] = ("tensorboard",),
                 config: ExperimentConfig | None = None, resume: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        # first: one may refuse to start
        self.trackers: list[Tracker] = open_trackers(loggers, run_dir, config, resume)
        self.path = run_dir / LOG_FILE
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write ``record`` (flat name -> number) for ``step``."""
        self._file.write(json.dumps({"step": step, **record}) + "\n")
        self._file.flush()
        scalars = {name: float(value) for name, value in record.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        self._each("log", step, scalars)

    def summary(self, name: str, rows: Sequence[Row], text: str) -> None:
        """Give every tracker a closing table (``rows``: one dict per row; ``text``: its plain rendering)."""
        self._each("summary", name, rows, text)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must not stop the training
                log.warning("logger %s failed (%s: %s); the run goes on without it", type(tracker).__name__,
                            type(exc).__name__, exc)
                self.trackers.remove(tracker)

    def close(self, failed: bool = False) -> None:
        """Close the log and end every tracker's run (``failed``: the run did not finish)."""
        if not self._file.closed:
            self._file.close()
        self._each("close", failed)
        self.trackers = []


class Finishing(Protocol):
    """What :func:`finish_run` needs of the run's validator (mmtl.training.validation.Validator)."""

    def finish(self, log_path: Path) -> Path | None: ...


def finish_run(logger: RunLogger, run_dir: Path, tasks: list[str], validator: Finishing | None) -> None:
    """The end of a finished run: loss, monitor and validation plots, ``validation.json``, and the
    final verdict table (each task's last validation) given to the trackers."""
    plot_losses(logger.path, run_dir, tasks)
    plot_task_monitor(logger.path, run_dir)
    summary = validator.finish(logger.path) if validator is not None else None
    if summary is None:
        return
    record = json.loads(summary.read_text())
    rows = verdict_rows(record)
    if rows:
        protection = record.get("protection")
        text = format_verdicts(protection["tasks"], protection["against"]) if protection else \
            "\n".join(f"{r['task']}: {r['verdict']}" for r in rows)
        logger.summary("verdicts", rows, text)


def verdict_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The final verdict of every task from a ``validation.json`` record: its "no task left behind"
    standing with ``validation.protect``, else whether its last validation regressed against the reference."""
    protection = record.get("protection")
    if protection:
        return [{"task": t, "value": abs(v["value"]), "reference": None if v["reference"] is None else abs(v["reference"]),
                 "change": v["change"], "loss_factor": v["factor"], "verdict": "BEHIND" if v["behind"] else "ok"}
                for t, v in protection["tasks"].items()]
    last = (record.get("history") or [None])[-1]
    if not last:
        return []
    return [{"task": t, "step": last["step"], "loss": last["losses"].get(t),
             "verdict": "REGRESSED" if t in last["regressed"] else "ok"} for t in last["metrics"]]


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a JSONL log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(log_path: Path, out_dir: Path, tasks: list[str]) -> list[Path]:
    """One PNG per task (``loss_<task>.png``) with its training loss curve; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    written = []
    for task in tasks:
        key = f"loss/{task}"
        points = [(r["step"], r[key]) for r in records if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(*zip(*points), color="tab:blue")
        ax.set(title=f"{task} training loss", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"loss_{task}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# quantity prefix in the log -> (PNG name, title); one PNG per quantity, one line per task or pair
MONITOR_PLOTS = {
    "grad_norm/": ("task_grad_norm.png", "per-task gradient norm (shared parameters)"),
    "grad_cos/": ("task_grad_cosine.png", "cosine between task gradients"),
    "weight/": ("task_weights.png", "task weights"),
}


def plot_task_monitor(log_path: Path, out_dir: Path) -> list[Path]:
    """PNGs of the per-task gradient norms, pairwise gradient cosines and task weights; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    written = []
    for prefix, (name, title) in MONITOR_PLOTS.items():
        keys = sorted({k for r in records for k in r if k.startswith(prefix)})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), label=key[len(prefix):])
        ax.set(title=title, xlabel="step")
        if prefix == "grad_cos/":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_validation(log_path: Path, out_dir: Path) -> Path | None:
    """``val_metrics.png``: one panel per task with its validation metrics over steps, plus a Δm panel
    when the run computed it; None when the log has no validation records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log_path) if any(k.startswith("val/") for k in r)]
    panels: dict[str, list[str]] = {}
    for key in sorted({k for r in records for k in r if k.count("/") == 2 and k.startswith("val/")}):
        _, task, metric = key.split("/")
        if metric != "loss":
            panels.setdefault(task, []).append(key)
    if any("val/delta_m" in r for r in records):
        panels["Δm vs reference"] = ["val/delta_m"]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), dpi=100, squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), marker="o", ms=3, label=key.rsplit("/", 1)[-1])
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "val_metrics.png"
    fig.savefig(path)
    plt.close(fig)
    return path
