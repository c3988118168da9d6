"""Settings that live with their component, read through one function.

Each registered component (image and text encoder, fusion, modality, balancer, task) owns a ``Settings``
dataclass next to its code (:class:`mmtl.config.slots.NoSettings` where it has none); its fields declare
their ranges with ``fields.setting``, and a rule across fields is its ``check(prefix)`` method (raising a
ConfigError). A config section that selects a component declares a
:class:`mmtl.config.slots.Slot` and keeps the component's values, as given, in its ``options`` field;
:func:`settings_of` checks them against the component's dataclass and builds it. The registries are
read through the catalog that :mod:`mmtl.components` installs (:mod:`mmtl.config.catalog`).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator

from mmtl.config.building import build_dataclass, short
from mmtl.config.catalog import installed_catalog
from mmtl.config.fields import check_ranges
from mmtl.config.slots import OPTIONS, Slot, section_keys, settings_class, slot_of
from mmtl.errors import ConfigError


def settings_of(section: object, component: object, prefix: str) -> Any:
    """``component``'s ``Settings`` built from the values ``section`` holds for it: the one reader of a
    component's settings. A ConfigError names the key of an unknown, ill-typed or out-of-range value as
    it was written (``prefix`` is the section's dotted key)."""
    slot = _slot(section)
    values, spelled = _flattened(section, slot, prefix)
    cls = settings_class(component)
    own = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in own:
            _check_foreign(section, slot, (key, value), spelled[key], own, prefix)
    return _build(cls, {k: v for k, v in values.items() if k in own}, spelled, prefix)


def selected(section: object, prefix: str, key: str = "") -> tuple[Any, Any]:
    """(component, its settings) that ``section`` selects; ``key``: the mapping key the section sits under."""
    slot = _slot(section)
    component = installed_catalog().registry(slot.kind).get(getattr(section, slot.selector) if slot.selector else key)
    return component, settings_of(section, component, prefix)


def ignored_settings(section: object, prefix: str, key: str = "") -> list[str]:
    """The dotted keys (as written) of the values ``section`` holds that the component it selects does not
    read, i.e. settings of another component of its kind; empty mappings and lists are left out (an earlier
    version saved ``balancer.weights: {}`` whatever the balancer)."""
    slot = _slot(section)
    component = installed_catalog().registry(slot.kind).get(getattr(section, slot.selector) if slot.selector else key)
    values, spelled = _flattened(section, slot, prefix)
    own = _field_names(component)
    return [spelled[k] for k, v in values.items() if k not in own and not (isinstance(v, (dict, list)) and not v)]


def check_components(config: object, prefix: str = "") -> None:
    """Check every component-selecting section of the dataclass tree ``config`` (key and settings) and
    leave in its ``options`` the chosen component's resolved settings (defaults filled in, values meant
    for other components dropped): what a saved config holds, so that saving and loading give equal configs."""
    for key, section, mapping_key in _sections(config, prefix):
        setattr(section, OPTIONS, dataclasses.asdict(selected(section, key, mapping_key)[1]))


def as_tree(value: Any, prefix: str = "", key: str = "") -> Any:
    """A config dataclass tree as plain nested values. A section that selects a component holds that
    component's resolved settings (defaults included) beside its own keys."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        slot = slot_of(value)
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            name = f"{prefix}.{f.name}" if prefix else f.name
            if slot is not None and f.name == OPTIONS:
                tree.update(dataclasses.asdict(selected(value, prefix, key)[1]))
            else:
                tree[f.name] = as_tree(getattr(value, f.name), name)
        return tree
    if isinstance(value, list):
        return [as_tree(v, f"{prefix}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: as_tree(v, f"{prefix}.{k}", str(k)) for k, v in value.items()}
    return copy.deepcopy(value)


def _slot(section: object) -> Slot:
    slot = slot_of(section)
    if slot is None:
        raise TypeError(f"{type(section).__name__} selects no component")
    return slot


def _flattened(section: object, slot: Slot, prefix: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The section's component values with an earlier nesting (``balancer.options``) lifted flat, and the
    dotted key each was written under (a flat key wins over the same key in the earlier nesting)."""
    values: dict[str, Any] = dict(getattr(section, OPTIONS))
    spelled = {key: f"{prefix}.{key}" for key in values}
    nest = slot.earlier_nest
    if nest and nest in values:
        nested = values.pop(nest)
        del spelled[nest]
        if not isinstance(nested, dict):
            raise ConfigError(f"{prefix}.{nest} must be a section (mapping), got {short(nested)}")
        for key, value in nested.items():
            if key not in values:
                values[key], spelled[key] = value, f"{prefix}.{nest}.{key}"
    return values, spelled


def _check_foreign(section: object, slot: Slot, item: tuple[str, Any], spelled: str, own: set[str],
                   prefix: str) -> None:
    """A value the chosen component does not read: accepted when another component of the kind reads it
    (and its type holds for that one), else a ConfigError naming the key and the valid ones."""
    key, value = item
    if slot.shared_keys:
        registry = installed_catalog().registry(slot.kind)
        owner = next((c for _, c in registry.items() if key in _field_names(c)), None)
        if owner is not None:
            build_dataclass(settings_class(owner), {key: value}, spelled.rpartition(".")[0])
            return
    valid = sorted({*section_keys(type(section)), *own})
    if not valid:
        raise ConfigError(f"{prefix}: this {slot.kind} has no settings; got {key}")
    raise ConfigError(f"unknown config key '{spelled}'; valid keys here: {', '.join(valid)}")


def _build(cls: type, values: dict[str, Any], spelled: dict[str, str], prefix: str) -> Any:
    """Settings ``cls`` from ``values``: types, choices and ranges checked (errors name each key as written),
    then the dataclass's own cross-field ``check(prefix)`` where it has one."""
    kwargs: dict[str, Any] = {}
    for parent in dict.fromkeys(spelled[k].rpartition(".")[0] for k in values):
        group = {k: v for k, v in values.items() if spelled[k].rpartition(".")[0] == parent}
        built = build_dataclass(cls, group, parent)
        kwargs.update({k: getattr(built, k) for k in group})
    settings = cls(**kwargs)
    check_ranges(settings, prefix, {k: spelled[k] for k in values})
    check = getattr(settings, "check", None)
    if check is not None:
        check(prefix)
    return settings


def _field_names(component: object) -> set[str]:
    return {f.name for f in dataclasses.fields(settings_class(component))}


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
