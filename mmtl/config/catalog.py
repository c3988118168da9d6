"""The components a config may name, handed to the config layer by the layer that registers them.

The config layer is core: it imports no component and reads no registry of its own accord. The layer
that knows the components (:mod:`mmtl.components`, which every entry point imports first) installs a
:class:`Catalog`: the registry each kind of slot selects from, and the checks of a config that need
the components themselves (which tasks exist, what kind of balancer was chosen). ``validate`` runs
those checks after its own, and a slot section reads its component's ``Settings`` through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mmtl.errors import ConfigError
from mmtl.registry import Registry


def _no_checks(config: Any) -> None:
    """A catalog without component checks."""


@dataclass(frozen=True)
class Catalog:
    """The registries that slot sections select from (by ``Slot.kind``) and the checks that read components."""

    registries: Mapping[str, Registry]
    check: Callable[[Any], None] = field(default=_no_checks)

    def registry(self, kind: str) -> Registry:
        """The registry of components of ``kind`` (a ConfigError when this catalog has none)."""
        if kind not in self.registries:
            raise ConfigError(f"no {kind} is registered; import mmtl.components to register the built-in ones")
        return self.registries[kind]


_installed: list[Catalog] = []


def install_catalog(catalog: Catalog) -> None:
    """Make ``catalog`` the one the config layer reads (the last installed wins)."""
    _installed[:] = [catalog]


def installed_catalog() -> Catalog:
    """The installed catalog, or a ConfigError saying how to install one."""
    if not _installed:
        raise ConfigError("no component is registered (no task, balancer or encoder is known to the config); "
                          "import mmtl.components to register the built-in ones")
    return _installed[0]


def known_registry(kind: str) -> Registry | None:
    """The installed catalog's registry of ``kind``, or None before the components are known (a preflight)."""
    return _installed[0].registries.get(kind) if _installed else None
