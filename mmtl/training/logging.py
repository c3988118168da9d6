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
