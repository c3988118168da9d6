"""How a config section selects a registered component whose own settings dataclass checks its values.

A section that selects one component of a registry (``model.image``, ``model.text``,
``model.modalities.<name>``, ``balancer``) declares a :class:`Slot`. The selected component's values
are kept, as given, in the section's ``options`` field; in YAML they sit under ``options``
(``balancer.options.c``) or, for a flat slot, beside the section's own fields (``model.image.timm_model``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mmtl.registry import Registry

OPTIONS = "options"  # the section field holding the selected component's values


@dataclass
class NoSettings:
    """Settings of a component that has none."""


@dataclass(frozen=True)
class Slot:
    """How a config section selects a registered component and where that component's values are."""

    registry: Registry
    # the section field holding the registry key; "" = the key the section sits under in its mapping
    selector: str = "name"
    # the values sit beside the section's own fields (flat YAML keys) instead of under ``options``;
    # flat keys a preset sets for one component stay when another is chosen, so a flat section
    # accepts (type-checks, then ignores) the values of the other components of its registry
    flat: bool = True


def slot_of(section: object) -> Slot | None:
    """The :class:`Slot` a config section declares (None for a section that selects no component)."""
    return getattr(type(section), "slot", None)


def section_keys(cls: type) -> list[str]:
    """The YAML keys a section class has of its own (a flat section's ``options`` is not one of them)."""
    slot: Slot | None = getattr(cls, "slot", None)
    hidden = {OPTIONS} if slot is not None and slot.flat else set()
    return [f.name for f in dataclasses.fields(cls) if f.name not in hidden]


def split_flat(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A flat section's YAML mapping with the keys that are not the section's own moved into ``options``."""
    slot: Slot | None = getattr(cls, "slot", None)
    if slot is None or not slot.flat:
        return values
    own = set(section_keys(cls))
    return {**{k: v for k, v in values.items() if k in own}, OPTIONS: {k: v for k, v in values.items() if k not in own}}
