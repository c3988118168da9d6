"""Sizes refused before allocation: a model's memory, estimated from its config, against a budget.

Before a model is built (from a config and a data set, or from a checkpoint), :func:`check_budget`
estimates the memory its parameters (with gradients and optimiser state when training) and its
activations at the batch size would take, from the sizes in the config, the vocabulary size and the
class count. Over the budget, one :class:`~mmtl.errors.ConfigError` names the size that costs most
and the estimate; nothing has been allocated yet.

The estimate is deliberately coarse (dense fp32 tensors, attention scores materialised, every
layer's activations kept when training): it exists to refuse sizes that cannot fit by orders of
magnitude, not to plan a run to the last megabyte.

The budget: ``model.memory_budget_gb`` in the user's own config, else the ``MMTL_MEMORY_BUDGET_GB``
environment variable, else the memory of this machine (RAM, lowered by a cgroup limit or an
address-space limit when one is set). A checkpoint's config cannot raise it (the setting is
``local``: see ``fields.setting``).
"""
from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtl.config.catalog import known_registry
from mmtl.config.fields import check_ranges
from mmtl.config.model import DecoderConfig, FusionConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from mmtl.config.parsing import apply_overrides, deep_merge, drop_local, read_yaml_tree
from mmtl.config.presets import MODEL_PRESETS
from mmtl.config.schema import DataConfig, ExperimentConfig
from mmtl.errors import ConfigError
from mmtl.files import is_plain_name, read_bounded, read_pointer
from mmtl.text import FULL_BPE_SIZE, SPECIAL_TOKENS

GIB = 2**30
BYTES = 4  # fp32
BUDGET_ENV = "MMTL_MEMORY_BUDGET_GB"
MAX_CLASSES = 1_000_000  # a class list longer than this is refused before any head is built
MAX_META_BYTES = 512 * 2**20  # a meta.json larger than this is not one mmtl wrote
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class Cost:
    """Bytes that one size of the config accounts for."""

    field: str  # the setting(s) it grows with, as ``key=value``
    what: str
    bytes: float


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, lowered by a cgroup or address-space limit."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        limits.append(soft)
    try:
        text = CGROUP_LIMIT.read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    return min(limits)


def memory_budget(config: ExperimentConfig) -> tuple[float, str]:
    """(bytes, where the number comes from) of the budget a model must fit in."""
    if config.model.memory_budget_gb > 0:
        return config.model.memory_budget_gb * GIB, "model.memory_budget_gb"
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{BUDGET_ENV}={raw[:40]!r} is not a number of GB") from None
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{BUDGET_ENV} must be a positive number of GB, got {raw[:40]!r}")
        return value * GIB, BUDGET_ENV
    return float(machine_memory()), "this machine's memory; set model.memory_budget_gb to change it"


def costs(config: ExperimentConfig, classes: int, vocab_size: int, batch: int, training: bool,
          unknown_writes_text: bool = True) -> list[Cost]:
    """The main memory costs of the model ``config`` describes, each with the size it grows with.

    Per token and layer a transformer keeps about (8 + 2 * mlp_ratio) * width values for the backward
    pass; without training one layer's worth is alive at a time. Attention scores are counted for one
    layer, the image backbone at 16 values per input pixel value, image tokens at one per 16x16 pixels.
    Training also keeps up to ``data.decoded_cache_mb`` of decoded images and ``data.shard_cache_mb`` of
    shards. A task not registered yet (a preflight) counts as one that writes text when ``unknown_writes_text``.
    """
    m = config.model
    w, r = m.width, m.mlp_ratio
    text_depth = m.text.options.get("depth", 2)
    text_depth = text_depth if isinstance(text_depth, int) and text_depth > 0 else 2
    tasks = known_registry("task")
    writers = sum(bool(getattr(tasks.get(task), "writes_text", True)) if tasks is not None and task in tasks
                  else unknown_writes_text for task in config.tasks)
    decoders = min(writers, 1) if m.decoder.shared else writers  # a text decoder per task that writes text
    layers = m.fusion.depth + text_depth + m.decoder.depth * decoders
    state = BYTES * (4 if training else 2)  # weights (+ gradients and two Adam moments) or weights + loaded file

    def kept(depth: int) -> int:
        return max(depth, 1) if training else 1

    image_tokens = max(1, m.image.image_size // 16) ** 2
    context, length = m.text.context_length, m.decoder.max_length
    per_token = (8 + 2 * r) * w * BYTES
    return [
        Cost(f"model.width={w}", f"{layers} transformer layers", layers * (4 + 2 * r) * w * w * state),
        Cost(f"model.width={w}", f"token embeddings of {vocab_size:,} tokens", vocab_size * w * (1 + 2 * decoders) * state),
        Cost(f"classes={classes:,}", "classification heads", classes * w * 2 * state),
        Cost(f"model.text.context_length={context}", "text positions and activations",
             context * w * state + batch * context * per_token * kept(text_depth + m.fusion.depth)
             + batch * m.num_heads * (context + image_tokens) * context * BYTES),
        Cost(f"model.image.image_size={m.image.image_size}", "image activations",
             batch * 3 * m.image.image_size ** 2 * BYTES * 16 + batch * image_tokens * per_token * kept(m.fusion.depth)
             + batch * m.num_heads * (context + image_tokens) * image_tokens * BYTES),
        Cost(f"model.decoder.max_length={length}", "decoder positions, activations and logits",
             decoders * length * w * state
             + batch * length * per_token * kept(m.decoder.depth)
             + batch * (length if training else 1) * vocab_size * BYTES * 2),
        Cost(f"data.decoded_cache_mb={config.data.decoded_cache_mb}", "decoded training images kept",
             config.data.decoded_cache_mb * 2**20 if training else 0),
        Cost(f"data.shard_cache_mb={config.data.shard_cache_mb}", "training shards kept",
             config.data.shard_cache_mb * 2**20 if training else 0),
    ]


def check_budget(config: ExperimentConfig, classes: int, vocab_size: int, training: bool,
                 unknown_writes_text: bool = True) -> float:
    """ConfigError naming the costliest size when the model ``config`` describes would not fit the
    memory budget (checked before anything is built); returns the estimate in bytes."""
    if classes > MAX_CLASSES:
        raise ConfigError(f"the class list has {classes:,} classes; at most {MAX_CLASSES:,} are supported")
    batch = max(config.data.batch_size, 1)
    items = costs(config, classes, vocab_size, batch, training, unknown_writes_text)
    total = sum(item.bytes for item in items)
    budget, source = memory_budget(config)
    if total > budget:
        worst = max(items, key=lambda item: item.bytes)
        raise ConfigError(
            f"{worst.field}: the model would need about {_size(total)} of memory ({worst.what}: {_size(worst.bytes)}"
            f"{' at batch size ' + str(batch) if training else ''}), over the budget of {_size(budget)} ({source}); "
            f"lower {worst.field.split('=')[0]}")
    return total


def _size(count: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,.0f} bytes"


# ---------------------------------------------------------------------------------------------
# preflight: the same check from the raw files, before torch is imported


def preflight_checkpoint(path: str | Path) -> None:
    """The size checks of the checkpoint in ``path`` (a checkpoint, a run, or ``RUN/checkpoints``) from
    its ``config.yaml`` and ``meta.json`` alone, in plain Python: the CLI calls it before importing
    torch, so that a refused model costs a few MB instead of the libraries' hundreds. Silent when the
    files are not found or not as expected: the loader reports those, and checks again."""
    found = _checkpoint_files(Path(path))
    if found is None:
        return
    config_file, meta_file = found
    try:
        meta = json.loads(read_bounded(meta_file, MAX_META_BYTES))
        tree = read_yaml_tree(config_file, follow_includes=False)
        drop_local(ExperimentConfig, tree)
    except (OSError, ValueError, ConfigError, RecursionError):
        return
    if not isinstance(meta, dict):
        return
    classes = meta.get("classes")
    vocab = meta.get("vocab")
    vocab_size = FULL_BPE_SIZE
    if isinstance(vocab, dict) and vocab.get("kind") != "full" and isinstance(vocab.get("bpe_ids"), list):
        vocab_size = len(vocab["bpe_ids"]) + len(SPECIAL_TOKENS)
    preflight_tree(tree, len(classes) if isinstance(classes, list) else 0, vocab_size, training=False)


def preflight_config(raw: dict[str, Any], overrides: list[str], training: bool | None) -> None:
    """The size checks of the user's own experiment config (``raw``: its YAML tree as ``read_yaml_tree``
    returns it, {} for the built-in one; plus ``key=value`` overrides), in plain Python: the CLI calls it
    before importing torch, then builds the config from the same tree. Ranges always;
    with ``training`` (True: a model trained from it, False: built for inference, None: not built from
    it) also the budget, as a lower bound: no classes, the smallest vocabulary, and tasks not known yet
    writing no text, so that it refuses only what the full check (``check_budget``, when the model is
    built) would refuse too. A config that does not parse is left to the full check, which names why."""
    try:
        tree = apply_overrides(raw, overrides)
    except (ConfigError, RecursionError):
        return
    preflight_tree(tree, 0, len(SPECIAL_TOKENS), training, unknown_writes_text=False)


def preflight_tree(tree: dict[str, Any], classes: int, vocab_size: int, training: bool | None,
                   unknown_writes_text: bool = True) -> None:
    """:func:`check_budget` on a raw config tree (``local`` settings already dropped when it came with a
    checkpoint): its model sizes are range-checked and estimated (``training`` None: ranges only); a tree
    whose sizes are not plain numbers is left to the full config check."""
    if classes > MAX_CLASSES:
        raise ConfigError(f"the class list has {classes:,} classes; at most {MAX_CLASSES:,} are supported")
    config = _sizes_only(tree)
    if config is None:
        return
    check_ranges(config.model, "model")
    check_ranges(config.data, "data")
    if training is not None:
        check_budget(config, classes, vocab_size, training, unknown_writes_text)


def _sizes_only(tree: dict[str, Any]) -> ExperimentConfig | None:
    """An ExperimentConfig holding only the sizes of ``tree`` (model preset applied), or None when one of
    them is not a plain number."""
    model = tree.get("model", {})
    preset = model.get("preset", ModelConfig.preset) if isinstance(model, dict) else None
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        return None
    model = deep_merge(MODEL_PRESETS[preset], model)
    sections = {name: model.get(name, {}) for name in ("image", "text", "fusion", "decoder")}
    data = tree.get("data", {})
    tasks = tree.get("tasks", ExperimentConfig().tasks)
    if not all(isinstance(v, dict) for v in (*sections.values(), data)) or not isinstance(tasks, list):
        return None
    image, text, fusion, decoder = sections.values()
    try:
        return ExperimentConfig(
            tasks=[str(t) for t in tasks],
            data=DataConfig(batch_size=_number(data, "batch_size", DataConfig.batch_size),
                            decoded_cache_mb=_number(data, "decoded_cache_mb", DataConfig.decoded_cache_mb),
                            shard_cache_mb=_number(data, "shard_cache_mb", DataConfig.shard_cache_mb)),
            model=ModelConfig(
                width=_number(model, "width", ModelConfig.width), num_heads=_number(model, "num_heads", ModelConfig.num_heads),
                mlp_ratio=_number(model, "mlp_ratio", ModelConfig.mlp_ratio, float),
                memory_budget_gb=_number(model, "memory_budget_gb", ModelConfig.memory_budget_gb, float),
                image=ImageEncoderConfig(image_size=_number(image, "image_size", ImageEncoderConfig.image_size)),
                text=TextEncoderConfig(context_length=_number(text, "context_length", TextEncoderConfig.context_length),
                                       options={"depth": _number(text, "depth", 2)}),
                fusion=FusionConfig(depth=_number(fusion, "depth", FusionConfig.depth)),
                decoder=DecoderConfig(depth=_number(decoder, "depth", DecoderConfig.depth),
                                      max_length=_number(decoder, "max_length", DecoderConfig.max_length),
                                      shared=decoder.get("shared") is True)))
    except (TypeError, ValueError):
        return None


def _number(section: dict[str, Any], key: str, default: Any, kind: type = int) -> Any:
    """``section[key]`` (``default`` when absent) when it is a number of ``kind``; TypeError otherwise."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(key)
    return value


def _checkpoint_files(path: Path) -> tuple[Path, Path] | None:
    """(config.yaml, meta.json) of the checkpoint ``path`` names, found as the loader finds it (a
    ``LATEST`` pointer is followed only to a plain name in its own folder), or None."""
    for candidate in (path, path / "checkpoints"):
        folders = [candidate]
        try:
            name = read_pointer(candidate / "LATEST")
            if is_plain_name(name):
                folders.append(candidate / name)
        except (OSError, UnicodeDecodeError):
            pass
        for folder in folders:
            if (folder / "config.yaml").is_file() and (folder / "meta.json").is_file():
                return folder / "config.yaml", folder / "meta.json"
    return None
