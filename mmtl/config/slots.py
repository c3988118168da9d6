"""The one shape of a config section that selects a registered component.

A section picks a component of one kind (``Slot.kind``: "balancer", "task", "image encoder", ...) by its
``name`` key (``model.image``, ``model.text``, ``model.fusion``, ``balancer``) or by the key it sits under
in a mapping (``model.modalities.<name>``, ``task_settings.<task>``). Every other YAML key of the section
that is not one of the section's own fields is a setting of that component, flat beside them
(``model.image.timm_model``, ``balancer.c``, ``task_settings.summarization.mode``), and the component's
``Settings`` dataclass checks it. The section keeps those values, as given, in its ``options`` field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OPTIONS = "options"  # the section field holding the selected component's values, as given


@dataclass
class NoSettings:
    """Settings of a component that has none."""


@dataclass(frozen=True)
class Slot:
    """How a config section selects a registered component and reads its settings."""

    kind: str  # the kind of component (a registry's ``kind``), looked up in the installed catalog
    # the section field holding the registry key; "" = the key the section sits under in its mapping
    selector: str = "name"
    # the settings of the kind's other components are accepted too (type-checked, then ignored): a preset
    # or a saved config sets one component's keys, and they stay when the section selects another
    shared_keys: bool = True
    # a key under which earlier versions nested the component's settings (``balancer.options``); what
    # it holds is read as if it sat flat in the section, and errors name it as it was written
    earlier_nest: str = ""


def slot_of(section: object) -> Slot | None:
    """The :class:`Slot` a config section declares (None for a section that selects no component)."""
    return getattr(type(section), "slot", None)


def settings_class(component: object) -> type:
    """The ``Settings`` dataclass a registered component owns (:class:`NoSettings` when it declares none)."""
    return getattr(component, "Settings", NoSettings)


def section_keys(cls: type) -> list[str]:
    """The YAML keys a section class has of its own (a slot's ``options`` holder is not one of them)."""
    hidden = {OPTIONS} if getattr(cls, "slot", None) is not None else set()
    return [f.name for f in dataclasses.fields(cls) if f.name not in hidden]


def split_flat(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A slot section's YAML mapping with the keys that are not the section's own moved into ``options``."""
    if getattr(cls, "slot", None) is None:
        return values
    own = set(section_keys(cls))
    return {**{k: v for k, v in values.items() if k in own}, OPTIONS: {k: v for k, v in values.items() if k not in own}}
