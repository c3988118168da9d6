"""One small registry: components are found by an explicit key, never by matching names.

The registries start empty; importing :mod:`mmtl.components` fills them with the built-in components and
hands them to the config layer (:mod:`mmtl.config.catalog`), which reads no registry of its own accord.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from mmtl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a string key to a builder (class or function) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``key``; a duplicate key is a bug."""

        def decorate(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return decorate

    def unregister(self, key: str) -> T:
        """Remove and return the component registered under ``key`` (a test's toy component, say)."""
        return self._items.pop(key)

    def get(self, key: str) -> T:
        """Return the component registered under ``key`` or raise a ConfigError listing valid keys."""
        try:
            return self._items[key]
        except KeyError:
            if not self._items:  # nothing imported the registering modules (the entry points import mmtl.components)
                raise ConfigError(f"unknown {self.kind} {key!r}: no {self.kind} is registered; "
                                  "import mmtl.components to register the built-in ones") from None
            raise ConfigError(f"unknown {self.kind} {key!r}; valid: {', '.join(sorted(self._items))}") from None

    def keys(self) -> list[str]:
        """All registered keys, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(key, component) pairs in the order they were registered."""
        return list(self._items.items())

    def __contains__(self, key: str) -> bool:
        return key in self._items


IMAGE_ENCODERS: Registry = Registry("image encoder")
TEXT_ENCODERS: Registry = Registry("text encoder")
FUSIONS: Registry = Registry("fusion")
TASKS: Registry = Registry("task")
BALANCERS: Registry = Registry("balancer")
# input modalities (image, text, depth, audio, ...), one class each: sample keys, decoding, collation,
# storing, the modality they stand for and their encoder (data_pipelines.modalities.Modality, mmtl.modalities)
MODALITIES: Registry = Registry("modality")
# encoders of modalities other than image and text (mmtl.modalities)
MODALITY_ENCODERS: Registry = Registry("modality encoder")
