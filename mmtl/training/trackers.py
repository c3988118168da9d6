"""Experiment trackers (``train.loggers``): TensorBoard, Weights & Biases and MLflow.

Every tracker receives what the run log (``log.jsonl``, always written) receives: per-task losses
(``loss/<task>``), task weights (``weight/<task>``), gradient-conflict monitors (``grad_norm/<task>``,
``grad_cos/<a>|<b>``), throughput, and validation metrics (``val/<task>/<metric>``); at the end of
a run, the final verdict table. ``wandb`` and ``mlflow`` are optional extras (``pip install
'mmtl[wandb]'``, ``'mmtl[mlflow]'``); they read their usual environment (``WANDB_MODE``,
``WANDB_PROJECT``, ``WANDB_DIR``; ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; MLflow 3 wants
``MLFLOW_ALLOW_FILE_STORE=true`` for a ``file:`` store). A tracker that cannot start is an MMTLError.
A tracker that fails while the run goes on is warned about once and dropped: the run never stops
for it. The run ids of W&B and MLflow are kept in ``RUN/trackers.json``, so that a resumed training
(``--resume``) continues the same tracker run instead of starting another one.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from mmtl.config import ExperimentConfig
from mmtl.errors import MMTLError
from mmtl.files import read_bounded, write_text_atomically

log = logging.getLogger(__name__)

# logger name -> (module it needs, extra that installs it); None: part of mmtl's own dependencies
LOGGERS: dict[str, tuple[str, str] | None] = {
    "jsonl": None, "tensorboard": None, "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow"),
}
Row = Mapping[str, Any]
IDS_FILE = "trackers.json"  # in the run folder: {tracker name: its run id}
MAX_IDS_BYTES = 64 * 2**10  # a few run ids; a larger file is not one mmtl wrote


class Tracker(Protocol):
    """What the run logger feeds every tracker; ``run_id``: the tracker's own id of the run (None: it has none)."""

    run_id: str | None

    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def summary(self, name: str, rows: Sequence[Row], text: str) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def check_loggers(names: Sequence[str]) -> list[str]:
    """The trackers ``train.loggers`` names (``jsonl`` is always on); MMTLError for an unknown name or
    a missing extra, naming the pip command that installs it."""
    chosen = []
    for name in names:
        if name not in LOGGERS:
            raise MMTLError(f"train.loggers: unknown logger {name!r}; valid: {', '.join(LOGGERS)}")
        need = LOGGERS[name]
        if need is not None and importlib.util.find_spec(need[0]) is None:
            raise MMTLError(f"train.loggers lists {name}, but the {need[0]} package is not installed: "
                            f"pip install 'mmtl[{need[1]}]'")
        if name != "jsonl" and name not in chosen:
            chosen.append(name)
    return chosen


def open_trackers(names: Sequence[str], run_dir: Path, config: ExperimentConfig | None,
                  resume: bool = False) -> list[Tracker]:
    """One tracker per logger ``names`` asks for (besides the JSONL log). ``resume``: continue the tracker
    runs whose ids ``RUN/trackers.json`` holds; the ids of the runs opened are written there."""
    makers = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}
    previous = read_run_ids(run_dir) if resume else {}
    opened: list[Tracker] = []
    chosen = check_loggers(names)
    for name in chosen:
        try:
            opened.append(makers[name](run_dir, config, previous.get(name)))
        except Exception as exc:  # noqa: BLE001 - e.g. a refused tracking URI: one line, before any training
            for tracker in opened:
                tracker.close(failed=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise MMTLError(f"train.loggers: {name} could not start a run ({type(exc).__name__}: {first})") from exc
    ids = {name: tracker.run_id for name, tracker in zip(chosen, opened) if tracker.run_id}
    if ids or (run_dir / IDS_FILE).exists():
        write_text_atomically(run_dir / IDS_FILE, json.dumps({**previous, **ids}, indent=2))
    return opened


def read_run_ids(run_dir: Path) -> dict[str, str]:
    """``{tracker name: run id}`` of ``RUN/trackers.json`` (empty when absent or not such a mapping)."""
    try:
        ids = json.loads(read_bounded(run_dir / IDS_FILE, MAX_IDS_BYTES))
    except (OSError, ValueError):
        return {}
    if not isinstance(ids, dict):
        return {}
    return {k: v for k, v in ids.items() if isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= 128}


def flat_config(config: ExperimentConfig | None) -> dict[str, Any]:
    """``{dotted.key: value}`` of the config's leaves (the run's hyperparameters)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix.rstrip(".")] = node

    walk(config.to_dict() if config is not None else {}, "")
    return out


def markdown_table(rows: Sequence[Row]) -> str:
    """``rows`` (dicts with the same keys) as a Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows])


class TensorBoardTracker:
    """Scalars in ``RUN/tensorboard``; the verdict table as text."""

    run_id = None  # a resumed run appends to the same folder

    def __init__(self, run_dir: Path, config: ExperimentConfig | None, resume_id: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def summary(self, name: str, rows: Sequence[Row], text: str) -> None:
        self.writer.add_text(name, markdown_table(rows) or text)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run (offline with ``WANDB_MODE=offline``); its files go under ``WANDB_DIR`` or ``RUN/``.
    ``resume_id``: the id of the run to continue (W&B ``resume="allow"``)."""

    def __init__(self, run_dir: Path, config: ExperimentConfig | None, resume_id: str | None = None) -> None:
        import wandb

        self.wandb = wandb
        resuming = {"id": resume_id, "resume": "allow"} if resume_id else {}
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mmtl"), name=run_dir.name,
                              dir=os.environ.get("WANDB_DIR", str(run_dir)), config=flat_config(config),
                              reinit="create_new", **resuming)
        self.run_id: str | None = self.run.id

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def summary(self, name: str, rows: Sequence[Row], text: str) -> None:
        if rows:
            columns = list(rows[0])
            self.run.log({name: self.wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])})
        self.run.summary[f"{name}_text"] = text

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# MLflow metric names: letters, digits, and _ - . space / (anything else becomes _)
_MLFLOW_UNSAFE = re.compile(r"[^\w\-. /]")
# names of the run log that are also the folder of other names: the step's global gradient norm and the
# monitors' grad_norm/<task> (mmtl.balancing.monitor), which first appear steps later; known from the start
# so that a file store never holds "grad_norm" as a file when "grad_norm/<task>" needs it as a folder
_FOLDER_NAMES = ("grad_norm",)


class MlflowTracker:
    """An MLflow run in ``MLFLOW_EXPERIMENT_NAME`` (default ``mmtl``) of the tracking store
    ``MLFLOW_TRACKING_URI`` (a local ``file:`` store works offline). ``resume_id``: the run to continue,
    when that store still holds it."""

    def __init__(self, run_dir: Path, config: ExperimentConfig | None, resume_id: str | None = None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.folders: set[str] = set(_FOLDER_NAMES)  # metric-name prefixes that a file store keeps as folders
        self.run_id: str | None = self._reopen(resume_id) if resume_id else None
        if self.run_id is not None:
            return  # the parameters were logged when the run started (MLflow refuses to change them)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mmtl")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [Param(key, str(value)[:500]) for key, value in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _reopen(self, run_id: str) -> str | None:
        """``run_id`` marked running again, or None when this store does not hold it (a new run starts)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s of this run folder is not in the tracking store; starting a new one", run_id)
            return None
        self.client.update_run(run_id, status="RUNNING")
        self.folders.update(key.rsplit("/", 1)[0] for key in run.data.metrics if "/" in key)
        return run_id

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        names = [_MLFLOW_UNSAFE.sub("_", key) for key in scalars]
        # a file store keeps "a/b" in a folder "a": a metric named "a" too gets the name "a/all"
        self.folders.update(name.rsplit("/", 1)[0] for name in names if "/" in name)
        metrics = [Metric(f"{name}/all" if name in self.folders else name, value, now, step)
                   for name, value in zip(names, scalars.values())]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def summary(self, name: str, rows: Sequence[Row], text: str) -> None:
        self.client.log_text(self.run_id, markdown_table(rows) or text, f"{name}.md")

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
