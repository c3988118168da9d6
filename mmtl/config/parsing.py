"""YAML values into the schema: files with includes, dotted ``key=value`` overrides, presets, type checks.

Resolution order, later wins: dataclass defaults -> model preset (``model.preset``) -> YAML file ->
``key=value`` overrides. Every unknown key or ill-typed value raises a ConfigError that names the
key and what would be valid.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any

import yaml

from mmtl.config.building import build_dataclass, short
from mmtl.config.model import ModelConfig
from mmtl.config.presets import MODEL_PRESETS
from mmtl.config.schema import ExperimentConfig
from mmtl.config.validation import validate
from mmtl.errors import ConfigError
from mmtl.files import read_bounded

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 16 * 2**20  # a YAML config larger than this is no config (and would be read whole)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``update`` (neither input is modified).

    Keys ending in ``_kwargs`` are replaced whole: they are argument sets of one component,
    and mixing two sets (a preset's ViT knobs into a user's CNN) would be wrong.
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not str(key).endswith("_kwargs"):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.steps=200)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"override {short(text)}: value is not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"override {key}: value nested too deeply") from None
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any] | None, overrides: list[str] | None) -> dict[str, Any]:
    """A copy of the raw config tree ``raw`` with the ``key=value`` ``overrides`` set (nothing checked yet)."""
    tree = copy.deepcopy(raw or {})
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(tree, path, value)
    return tree


def resolve_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a raw mapping plus ``key=value`` overrides, applying the model preset."""
    tree = apply_overrides(raw, overrides)
    model = tree.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError("model must be a section (mapping)")
    preset = model.get("preset", ModelConfig.preset)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model.preset {short(preset)}; valid: {', '.join(sorted(MODEL_PRESETS))}")
    tree["model"] = deep_merge(MODEL_PRESETS[preset], model)
    config = build_dataclass(ExperimentConfig, tree)
    validate(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment file (or the built-in defaults when ``path`` is None) and apply overrides."""
    raw = read_yaml_tree(Path(path)) if path is not None else {}
    return resolve_config(raw, overrides)


def load_saved_config(path: str | Path) -> ExperimentConfig:
    """The config mmtl saved beside a model (a checkpoint's config.yaml), read as data.

    A setting added since it was written takes its ``earlier`` value (see ``fields.setting``), so the
    saved model is rebuilt as it was. A checkpoint is something users download and share: its
    ``include`` list is not followed (one warning), and every ``local`` setting (data sources, paths,
    output folder; see ``fields.setting``) takes its default, so that loading a checkpoint never reads,
    writes or runs what its config names.
    """
    raw = read_yaml_tree(Path(path), follow_includes=False)
    drop_local(ExperimentConfig, raw)
    _fill_earlier(ExperimentConfig, raw)
    return resolve_config(raw)


def drop_local(cls: type, tree: dict[str, Any]) -> None:
    """What a checkpoint's config may not set: remove, from ``tree``, every field of dataclass ``cls`` (and of its nested sections, including the
    entries of a mapping of sections) declared ``local``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in tree:
            continue
        if field.metadata.get("local"):
            del tree[field.name]
            continue
        kind, value = hints[field.name], tree[field.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            drop_local(kind, value)
        elif typing.get_origin(kind) is dict and isinstance(value, dict):
            item = typing.get_args(kind)[1]
            if dataclasses.is_dataclass(item):
                for entry in value.values():
                    if isinstance(entry, dict):
                        drop_local(item, entry)


def _fill_earlier(cls: type, tree: dict[str, Any]) -> None:
    """Set, in ``tree``, every field of dataclass ``cls`` (and its nested sections) that is absent and
    has an ``earlier`` value to that value."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in tree:
            if "earlier" in field.metadata:
                tree[field.name] = field.metadata["earlier"]
        elif dataclasses.is_dataclass(hints[field.name]) and isinstance(tree[field.name], dict):
            _fill_earlier(hints[field.name], tree[field.name])


def read_yaml_tree(path: Path, _seen: tuple[Path, ...] = (), follow_includes: bool = True) -> dict[str, Any]:
    """Read a YAML config; its optional ``include`` list (paths relative to it) is merged first.

    ``follow_includes=False`` (a config that came with a checkpoint): the list is dropped with one
    warning, and no other file is opened.
    """
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        loaded = yaml.safe_load(read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    loaded = loaded or {}
    includes = loaded.pop("include", [])
    if not follow_includes:
        if includes:
            log.warning("ignoring include: in %s (a checkpoint's config is read as data; it opens no other file)",
                        path)
        return loaded
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) and item for item in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {short(includes)}")
    tree: dict[str, Any] = {}
    for include in includes:
        tree = deep_merge(tree, read_yaml_tree(path.parent / include, _seen + (path.resolve(),)))
    return deep_merge(tree, loaded)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
