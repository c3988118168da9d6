"""Settings that live with their component.

Each registered component (image and text encoder, modality, balancer) owns a ``Settings`` dataclass
next to its code. A config section that selects one of them (``model.image``, ``model.text``,
``model.modalities.<name>``, ``balancer``) declares a :class:`mmtl.config.slots.Slot`: the registry it selects from,
which of its fields names the component, and whether the component's values sit beside the
section's own fields in YAML (``model.image.timm_model``) or under ``options``
(``balancer.options.c``). The section keeps those values, as given, in its ``options`` field;
:func:`settings_of` checks them against the component's dataclass and builds it.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator

from mmtl.config.building import build_dataclass
from mmtl.config.fields import check_ranges
from mmtl.config.slots import OPTIONS, section_keys, slot_of
from mmtl.errors import ConfigError


def settings_of(section: object, component: type, prefix: str) -> Any:
    """``component.Settings`` built from the values ``section`` holds for it (a ConfigError names the key
    of an unknown, ill-typed or out-of-range value; ``prefix`` is the section's dotted key)."""
    slot = slot_of(section)
    if slot is None:
        raise TypeError(f"{type(section).__name__} selects no component")
    values: dict[str, Any] = getattr(section, OPTIONS)
    if not slot.flat:
        return _build(component.Settings, values, f"{prefix}.{OPTIONS}")
    own = {f.name for f in dataclasses.fields(component.Settings)}
    for key, value in values.items():
        if key in own:
            continue
        owner = next((c for _, c in slot.registry.items() if key in _field_names(c)), None)
        if owner is None:
            valid = ", ".join(sorted({*section_keys(type(section)), *own}))
            raise ConfigError(f"unknown config key '{prefix}.{key}'; valid keys here: {valid}")
        build_dataclass(owner.Settings, {key: value}, prefix)  # a value another component reads: its type holds
    return _build(component.Settings, {k: v for k, v in values.items() if k in own}, prefix)


def selected(section: object, prefix: str, key: str = "") -> tuple[type, Any]:
    """(component, its settings) that ``section`` selects; ``key``: the mapping key the section sits under."""
    slot = slot_of(section)
    if slot is None:
        raise TypeError(f"{type(section).__name__} selects no component")
    component = slot.registry.get(getattr(section, slot.selector) if slot.selector else key)
    return component, settings_of(section, component, prefix)


def check_components(config: object, prefix: str = "") -> None:
    """Check every component-selecting section of the dataclass tree ``config`` (key and settings) and
    leave in its ``options`` the chosen component's resolved settings (defaults filled in, values meant
    for other components dropped): what a saved config holds, so that saving and loading give equal configs."""
    for key, section, mapping_key in _sections(config, prefix):
        setattr(section, OPTIONS, dataclasses.asdict(selected(section, key, mapping_key)[1]))


def as_tree(value: Any, prefix: str = "", key: str = "") -> Any:
    """A config dataclass tree as plain nested values. A section that selects a component holds that
    component's resolved settings (defaults included), beside its own keys when its slot is flat."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        slot = slot_of(value)
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            name = f"{prefix}.{f.name}" if prefix else f.name
            if slot is not None and f.name == OPTIONS:
                settings = dataclasses.asdict(selected(value, prefix, key)[1])
                tree.update(settings) if slot.flat else tree.setdefault(OPTIONS, settings)
            else:
                tree[f.name] = as_tree(getattr(value, f.name), name)
        return tree
    if isinstance(value, list):
        return [as_tree(v, f"{prefix}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: as_tree(v, f"{prefix}.{k}", str(k)) for k, v in value.items()}
    return copy.deepcopy(value)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    settings = build_dataclass(cls, values, prefix)
    check_ranges(settings, prefix)
    return settings


def _field_names(component: type) -> set[str]:
    return {f.name for f in dataclasses.fields(component.Settings)}


def _sections(value: object, prefix: str, mapping_key: str = "") -> Iterator[tuple[str, object, str]]:
    """(dotted key, section, mapping key) of every section with a slot in a dataclass tree, outermost first."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    if slot_of(value) is not None:
        yield prefix, value, mapping_key
    for f in dataclasses.fields(value):
        child, key = getattr(value, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(child, dict):
            for name, item in child.items():
                yield from _sections(item, f"{key}.{name}", str(name))
        else:
            yield from _sections(child, key)
