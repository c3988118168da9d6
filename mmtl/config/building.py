"""YAML values into config dataclasses: unknown keys, types and choices checked, with errors that name the key."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from mmtl.config.slots import section_keys, split_flat
from mmtl.errors import ConfigError

INT64_LIMIT = 2**63


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
            raise ConfigError(f"{key} must be a section (mapping), got {short(value)}")
        return build_dataclass(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {short(value)}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {short(value)}")
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
        raise ConfigError(f"{key} must be true or false, got {short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT64_LIMIT <= value < INT64_LIMIT:
                raise ConfigError(f"{key} must fit in 64 bits (|value| < 2**63), got {value}")
            return value
        raise ConfigError(f"{key} must be an integer, got {short(value)}")
    if tp is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{key} must be a number, got {short(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {short(value)}")
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


def short(value: Any) -> str:
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
    values = split_flat(cls, values)  # a flat section's component values go into its ``options``
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            valid = ", ".join(sorted(section_keys(cls)))
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
        converted = _convert(value, hints[name], key)
        options = fields[name].metadata.get("choices")
        if options and converted not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}; got {converted!r}")
        kwargs[name] = converted
    return cls(**kwargs)
