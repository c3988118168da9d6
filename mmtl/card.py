"""The model card: ``README.md`` of a run folder (and of an exported model), written for people.

It says what the model does and how it was made, from what the run folder holds: the tasks,
the data (paths, counts per split, the licence when the data set's ``dataset.json`` names one),
the preset and parameter counts, the metrics against the trivial baselines and, when known,
against single-task models (``mmtl eval --baselines``, ``mmtl quickstart --compare``), the
command that trained it and the mmtl version. Its YAML front matter is what model hubs read.

Inputs that are not in the checkpoint live in ``RUN/card.json`` (``command``, ``evaluation``), so
the card can be written again whenever a new evaluation is recorded.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Iterable

from mmtl.checkpoint import CONFIG_FILE, is_delta, read_meta, resolve_checkpoint
from mmtl.config import ExperimentConfig, load_saved_config
from mmtl.errors import MMTLError
from mmtl.files import read_bounded
from mmtl.version import __version__

CARD_FILE = "README.md"
CARD_DATA = "card.json"  # what the card shows that the checkpoint does not hold
MAX_CARD_DATA_BYTES = 16 * 2**20
LICENCE_KEYS = ("license", "licence")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(read_bounded(path, MAX_CARD_DATA_BYTES))
    except (OSError, ValueError):
        return {}


def card_inputs(run_dir: Path) -> dict[str, Any]:
    """``RUN/card.json``: the recorded command and latest evaluation (empty when absent)."""
    return _read_json(run_dir / CARD_DATA)


def update_card_inputs(run_dir: Path, **values: Any) -> None:
    """Merge ``values`` into ``RUN/card.json``."""
    (run_dir / CARD_DATA).write_text(json.dumps({**card_inputs(run_dir), **values}, indent=2))


def default_command(run_dir: Path) -> str:
    """The command that retrains the run from its saved config."""
    return f"mmtl train --config {shlex.quote(str(run_dir / CONFIG_FILE))}"


def write_card(run_dir: str | Path, command: str | None = None, out: str | Path | None = None,
               checkpoint: Path | None = None, config: ExperimentConfig | None = None) -> Path:
    """Write the model card of the run (or checkpoint) in ``run_dir`` to ``out`` (default ``run_dir/README.md``).

    ``command``: the command line that trained it (recorded in ``card.json``; default: the one recorded,
    else ``mmtl train --config RUN/config.yaml``). ``checkpoint``: the one described (default: the run's latest).
    ``config``: the config it was trained with, whose data sources the card describes (recorded in
    ``card.json``: a saved config is read as data, without its local paths).
    """
    run_dir = Path(run_dir)
    checkpoint = checkpoint or (run_dir if is_delta(run_dir) else resolve_checkpoint(run_dir))
    if command is not None:
        update_card_inputs(run_dir, command=command)
    if config is not None:
        update_card_inputs(run_dir, data=_data_rows(config))
    inputs = card_inputs(run_dir)
    config = load_saved_config(run_dir / CONFIG_FILE if (run_dir / CONFIG_FILE).is_file() else checkpoint / CONFIG_FILE)
    meta = read_meta(checkpoint)
    text = render_card(config, meta, inputs.get("evaluation"), _read_json(run_dir / "validation.json"),
                       inputs.get("command") or default_command(run_dir), inputs.get("data"))
    path = Path(out) if out is not None else run_dir / CARD_FILE
    path.write_text(text)
    return path


def record_evaluation(run_dir: Path, evaluation: dict[str, Any], command: str | None = None) -> Path | None:
    """Keep ``evaluation`` (``Evaluation.to_dict()``) in a run folder's card inputs and rewrite its card
    (``command``: also record the command that trained it); None (nothing written) when ``run_dir``
    is not a run folder or cannot be written."""
    if not (run_dir / "checkpoints").is_dir() or not (run_dir / CONFIG_FILE).is_file():
        return None
    try:
        update_card_inputs(run_dir, evaluation=evaluation)
        return write_card(run_dir, command=command)
    except (OSError, MMTLError):  # a read-only run folder: the evaluation itself still stands
        return None


def render_card(config: ExperimentConfig, meta: dict[str, Any], evaluation: dict[str, Any] | None,
                validation: dict[str, Any], command: str, data: list[dict[str, Any]] | None = None) -> str:
    """The card's Markdown (YAML front matter, then one section per topic); ``data``: the recorded
    data rows (default: read from ``config``'s sources)."""
    data = _data_rows(config) if data is None else data
    licences = sorted({row["licence"] for row in data if row.get("licence")})
    front = ["---", "library_name: mmtl", f"license: {licences[0] if len(licences) == 1 else 'other'}"
             if licences else "license: unknown", "tags: [multi-task-learning, multimodal, mmtl]", "---", ""]
    tasks = meta.get("tasks", list(config.tasks))
    lines = [*front, f"# {config.name}: {', '.join(tasks)}", "",
             f"One {config.model.preset!r} mmtl model for {len(tasks)} task(s): {', '.join(tasks)}. "
             f"Inputs: {', '.join(['image', 'text', *config.model.modalities])}.", ""]
    lines += _model_section(config, meta) + _data_section(data) + _results_section(evaluation, validation)
    lines += ["## How it was trained", "", "```", command, "```", "",
              f"{config.train.steps} steps, batch {config.data.batch_size}, learning rate {config.train.lr:g} "
              f"({config.train.schedule}), balancer {config.balancer.name!r}, seed {config.seed}; `config.yaml` "
              "holds every setting.", "",
              "## Use", "", "```python", "from mmtl import Predictor", "",
              'predictor = Predictor.from_pretrained("PATH/TO/THIS/FOLDER")',
              'print(predictor.predict(image="scene.png", text="a document to summarize").to_dict())', "```", "",
              f"Made with mmtl {meta.get('mmtl_version', __version__)} (card written by mmtl {__version__}).", ""]
    return "\n".join(lines)


def _model_section(config: ExperimentConfig, meta: dict[str, Any]) -> list[str]:
    params = meta.get("parameters", {})
    rows = [("part", "parameters")] + [(name.removeprefix("task:") + (" head" if name.startswith("task:") else ""),
                                        f"{count:,}") for name, count in params.items()]
    classes = meta.get("classes", [])
    lines = ["## Model", "", f"Preset `{config.model.preset}` (width {config.model.width}, fusion "
             f"`{config.model.fusion.name}`, sharing `{config.model.sharing}`), step {meta.get('step', '?')}, "
             f"vocabulary {_vocabulary(meta)}"
             + (f", {len(classes)} classes ({meta.get('label_mode', 'multi')}-label)" if classes else "") + ".", ""]
    return lines + (_table(rows) + [""] if params else [])


def _vocabulary(meta: dict[str, Any]) -> str:
    ids = (meta.get("vocab") or {}).get("bpe_ids")
    return f"{len(ids):,} tokens (compacted to the training data)" if ids else "the full open_clip BPE vocabulary"


def _data_rows(config: ExperimentConfig) -> list[dict[str, Any]]:
    """One row per data source: path, samples per split (from its dataset.json), licence."""
    paths = [s.path for s in config.data.sources] if config.data.sources else [config.data.path]
    rows = []
    for path in paths:
        info = _read_json(Path(str(path)) / "dataset.json")
        splits = {name: entry.get("samples") for name, entry in info.get("splits", {}).items()}
        licence = next((str(info[key]) for key in LICENCE_KEYS if info.get(key)), None)
        rows.append({"path": str(path), "splits": splits, "licence": licence})
    return rows


def _data_section(rows: list[dict[str, Any]]) -> list[str]:
    table = [("source", "samples per split", "licence")]
    for row in rows:
        counts = ", ".join(f"{split} {n:,}" for split, n in row["splits"].items() if isinstance(n, int))
        table.append((f"`{row['path']}`", counts or "unknown (no dataset.json)", row["licence"] or "not stated"))
    return ["## Data", ""] + _table(table) + [""]


def _results_section(evaluation: dict[str, Any] | None, validation: dict[str, Any]) -> list[str]:
    lines = ["## Results", ""]
    if evaluation:
        samples = f" ({evaluation['samples']} samples)" if evaluation.get("samples") else ""
        lines += [f"Held-out split `{evaluation.get('split')}`{samples}; the trivial "
                  "baseline predicts without looking at the input (majority labels, the most frequent text).", ""]
        delta = evaluation.get("delta") or {}
        single = {m["task"] + "/" + m["metric"]: m["baseline"] for m in delta.get("metrics", [])}
        rows = [("task", "metric", "model", "trivial baseline", "single-task model")]
        for task, metrics in evaluation.get("model", {}).items():
            for metric, value in metrics.items():
                trivial = evaluation.get("baseline", {}).get(task, {}).get(metric)
                rows.append((task, metric, _number(value), _number(trivial), _number(single.get(f"{task}/{metric}"))))
        lines += _table(rows) + [""]
        if delta:
            shown = "n/a" if delta.get("delta_m") is None else f"{100 * delta['delta_m']:+.2f}%"
            verdicts = ", ".join(f"{t} {'ok' if v['ok'] else 'REGRESSED'}" for t, v in delta.get("verdicts", {}).items())
            lines += [f"Against single-task models with the same budget: Δm = {shown}; {verdicts}.", ""]
        else:
            lines += ["No single-task models were compared (`mmtl baselines`, then `mmtl eval --baselines`).", ""]
    elif validation.get("best"):
        best = validation["best"]
        lines += [f"Not evaluated on a held-out split yet (`mmtl eval --checkpoint RUN`). Best validation: step "
                  f"{best.get('step')}.", ""]
    else:
        lines += ["Not evaluated yet: `mmtl eval --checkpoint RUN` records the metrics here.", ""]
    return lines


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    """A Markdown table (first row: the header)."""
    rows = list(rows)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
    return out + ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
