"""Run logs: a per-step JSONL file, TensorBoard scalars, and loss-curve PNGs at the end."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


class RunLogger:
    """Appends one JSON record per logged step and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOG_FILE
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write ``record`` (flat name -> number) for ``step``."""
        self._file.write(json.dumps({"step": step, **record}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
