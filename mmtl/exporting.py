"""``mmtl export``: the inference-only folder of a trained model, in the layout model hubs expect.

    model.safetensors   the inference weights (the moving average when the run kept one), byte for byte
    config.yaml         the resolved experiment config
    meta.json           tasks, classes, vocabulary, parameter counts
    README.md           the model card (mmtl.card)

No optimiser, scheduler or RNG state: the folder loads with ``Predictor.from_pretrained`` (and
``mmtl predict``/``serve``/``eval``) and predicts exactly as the checkpoint it came from. A fine-tuned
model (a delta on its base checkpoint) exports as one standalone folder: base and delta merged into
``model.safetensors`` (its adapters included); its ``meta.json`` keeps the ``finetune`` entry (strategy,
additions, the base's SHA-256) without the base's local path, and loading rebuilds the adapted model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_model

from mmtl.card import CARD_DATA, CARD_FILE, write_card
from mmtl.checkpoint import (
    CONFIG_FILE, META_FILE, MODEL_FILE, inference_weights, is_delta, load_delta, resolve_checkpoint,
)
from mmtl.config import save_config
from mmtl.errors import MMTLError
from mmtl.files import sync_tree

EXPORTED_FILES = (MODEL_FILE, CONFIG_FILE, META_FILE, CARD_FILE)


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``RUN/checkpoints/<name>``), or None for a lone checkpoint."""
    run = checkpoint.parent.parent
    return run if checkpoint.parent.name == "checkpoints" and (run / CONFIG_FILE).is_file() else None


def export_model(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the inference-only folder of the run, checkpoint or fine-tuned model ``source`` to ``out``
    (atomically; a fine-tuned model's weights merged with its base's)."""
    delta = is_delta(source)
    checkpoint = Path(source) if delta else resolve_checkpoint(source)
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise MMTLError(f"{out} already exists; choose another --out or pass --overwrite")
        if not out.is_dir() or not (out / MODEL_FILE).is_file() or (out / "checkpoints").exists():
            raise MMTLError(f"{out} is not an exported model folder; refusing to replace it (choose another --out)")
    held, target = checkpoint.resolve(), out.resolve()
    inside_run = run_folder_of(checkpoint) is not None and target.is_relative_to(held.parent)
    if held.is_relative_to(target) or target.is_relative_to(held) or inside_run:
        raise MMTLError(f"--out {out} lies inside or around the checkpoint it exports; choose a folder outside it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if delta:
            write_merged(checkpoint, tmp)
        else:
            shutil.copyfile(checkpoint / inference_weights(checkpoint), tmp / MODEL_FILE)
            for name in (CONFIG_FILE, META_FILE):
                shutil.copyfile(checkpoint / name, tmp / name)
        run = run_folder_of(checkpoint)
        if run is not None and (run / CARD_DATA).is_file():
            shutil.copyfile(run / CARD_DATA, tmp / CARD_DATA)  # the recorded command and evaluation
        write_card(run or checkpoint, out=tmp / CARD_FILE, checkpoint=checkpoint)
        sync_tree(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_merged(source: Path, out: Path) -> None:
    """Write the fine-tuned model in ``source`` (a delta; its base checkpoint where it names it) to ``out``
    as one checkpoint: every weight of the adapted model, its config, and its meta without the base's path."""
    components, config, meta = load_delta(source)
    save_model(components.model, str(out / MODEL_FILE))  # tied weights once, as write_checkpoint does
    save_config(config, out / CONFIG_FILE)
    meta = {**meta, "finetune": {k: v for k, v in meta["finetune"].items() if k != "base"} | {"merged": True}}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
