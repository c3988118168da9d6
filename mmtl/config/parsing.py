"""YAML values into the schema: files with includes, dotted ``key=value`` overrides, presets, type checks.

Resolution order, later wins: dataclass defaults -> model preset (``model.preset``) -> YAML file ->
``key=value`` overrides. Every unknown key or ill-typed value raises a ConfigError that names the
key and what would be valid.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mmtl.config.model import ModelConfig
from mmtl.config.presets import MODEL_PRESETS
from mmtl.config.schema import ExperimentConfig
from mmtl.config.validation import validate
from mmtl.errors import ConfigError

INT64_LIMIT = 2**63


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
        raise ConfigError(f"override {_short(text)}: value is not valid YAML ({problem})") from None
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, typing.get_args(tp), key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a section (mapping), got {_short(value)}")
        return build_dataclass(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_short(value)}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_short(value)}")
        return {_convert(k, key_tp, key): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    return _convert_scalar(value, tp, key)


def _convert_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The first member type of a union that ``value`` converts to (the first member's error otherwise)."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _convert_scalar(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against bool, int (64-bit), float (finite) or str."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT64_LIMIT <= value < INT64_LIMIT:
                raise ConfigError(f"{key} must fit in 64 bits (|value| < 2**63), got {value}")
            return value
        raise ConfigError(f"{key} must be an integer, got {_short(value)}")
    if tp is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {_short(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {_short(value)}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _as_float(value: Any) -> float | None:
    """A YAML number (or numeric string: YAML 1.1 reads 1e-3 without a dot as one) as a float; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    try:
        text = repr(value)
    except RecursionError:
        return "(a value nested too deeply)"
    return text if len(text) <= 80 else text[:77] + "..."


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking types and choices."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = cls.migrate(values) if hasattr(cls, "migrate") else values  # a section's own legacy keys
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
        converted = _convert(value, hints[name], key)
        options = fields[name].metadata.get("choices")
        if options and converted not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}; got {converted!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def resolve_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a raw mapping plus ``key=value`` overrides, applying the model preset."""
    tree = copy.deepcopy(raw or {})
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(tree, path, value)
    model = tree.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError("model must be a section (mapping)")
    preset = model.get("preset", ModelConfig.preset)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model.preset {_short(preset)}; valid: {', '.join(sorted(MODEL_PRESETS))}")
    tree["model"] = deep_merge(MODEL_PRESETS[preset], model)
    config = build_dataclass(ExperimentConfig, tree)
    validate(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment file (or the built-in defaults when ``path`` is None) and apply overrides."""
    raw = read_yaml_tree(Path(path)) if path is not None else {}
    return resolve_config(raw, overrides)


def read_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config; its optional ``include`` list (paths relative to it) is merged first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
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
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(item, str) and item for item in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {_short(includes)}")
    tree: dict[str, Any] = {}
    for include in includes:
        tree = deep_merge(tree, read_yaml_tree(path.parent / include, _seen + (path.resolve(),)))
    return deep_merge(tree, loaded)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
