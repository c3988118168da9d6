"""What a config field allows, declared on the field, and the one check that reads it.

A field's metadata may hold ``choices`` (its value must be one of them), ``range`` (a
:class:`Range` its number must fall in) and ``help`` (its description, also the help of a CLI
flag derived from it). :func:`setting` builds such a field; :func:`check_ranges` checks every
range of a dataclass tree.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mmtl.errors import ConfigError

Number = int | float


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (either end open or absent); ``rule`` is its wording in errors."""

    low: Number | None = None
    high: Number | None = None
    low_open: bool = False
    high_open: bool = False
    rule: str = ""

    def allows(self, value: Number) -> bool:
        """Whether ``value`` is finite and inside the range."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words, as in ``must be in [0, 1)``."""
        if self.rule:
            return self.rule
        low = f"{'>' if self.low_open else '>='} {self.low}"
        if self.high is None:
            return low
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True, rule="positive")
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)


def between(low: Number, high: Number, low_open: bool = False) -> Range:
    """A closed-above range worded ``>= low and <= high`` (``> low`` when ``low_open``)."""
    return Range(low, high, low_open, rule=f"{'>' if low_open else '>='} {low} and <= {high}")


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            choices: tuple[Any, ...] = (), range: Range | None = None, help: str = "",  # noqa: A002
            earlier: Any = dataclasses.MISSING, local: bool = False) -> Any:
    """A dataclass field with its allowed values and description in its metadata.

    ``earlier``: for a setting added after models were already saved, the value that rebuilds a
    model whose saved config.yaml predates it (``parsing.load_saved_config``), where it differs
    from today's default. ``local``: a setting about the machine that wrote the config (a path to
    read or write, a data source, a command): a checkpoint's value is never used, the field takes
    its default when a saved config is loaded (a checkpoint is data, not instructions).
    """
    metadata: dict[str, Any] = {}
    if local:
        metadata["local"] = True
    if earlier is not dataclasses.MISSING:
        metadata["earlier"] = earlier
    if choices:
        metadata["choices"] = choices
    if range is not None:
        metadata["range"] = range
    if help:
        metadata["help"] = help
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def choice(default: Any, *options: Any) -> Any:
    """A dataclass field whose value must be one of ``options``."""
    return setting(default, choices=options)


def check_ranges(obj: Any, prefix: str = "", keys: Mapping[str, str] | None = None) -> None:
    """Raise a ConfigError naming the first field of the dataclass tree ``obj`` outside its range.

    ``keys``: the dotted key a field of ``obj`` itself was written under, where not ``prefix.<field>``
    (a setting read from an earlier spelling)."""
    for f in dataclasses.fields(obj):
        key = (keys or {}).get(f.name) or (f"{prefix}.{f.name}" if prefix else f.name)
        value = getattr(obj, f.name)
        rule: Range | None = f.metadata.get("range")
        if rule is not None and value is not None and not rule.allows(value):  # None: unset, where allowed
            raise ConfigError(f"{key} must be {rule.describe()}, got {value!r}")
        for sub_key, item in _children(key, value):
            check_ranges(item, sub_key)


def _children(key: str, value: Any) -> list[tuple[str, Any]]:
    """The dataclass instances directly inside a field's value, with their keys."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(key, value)]
    if isinstance(value, list):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value) if dataclasses.is_dataclass(v)]
    if isinstance(value, dict):
        return [(f"{key}.{k}", v) for k, v in value.items() if dataclasses.is_dataclass(v)]
    return []
