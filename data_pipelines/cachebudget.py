"""The memory budget of a training-data cache (decoded images, whole shards): all of a set or nothing.

A cache claims the size of each item before it holds it. Training sets that fit are held whole, so
every later epoch hits; the first claim past the budget turns the budget off for good and the cache
drops what it holds, so a large set pins no memory for the few hits a partial cache would give.
"""
from __future__ import annotations


class CacheBudget:
    """Bytes a cache may hold (``limit``; 0: caching is off) and the bytes it holds (``used``)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.used = 0

    @property
    def on(self) -> bool:
        """Whether the cache may still hold anything."""
        return self.limit > 0

    def claim(self, size: int) -> bool:
        """Count ``size`` more bytes before holding them. False when they do not fit: the budget is then
        off for good (``used`` 0) and the cache must drop everything it holds."""
        if not self.on:
            return False
        if self.used + size > self.limit:
            self.limit, self.used = 0, 0
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes claimed for an item the cache did not keep after all."""
        self.used = max(0, self.used - size)
