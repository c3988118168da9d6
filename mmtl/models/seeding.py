"""Each part of a model drawn from its own random stream, so a part's initial weights depend on the seed
and on the part's name only, not on which other parts the model has.

Without this, a model's parts draw their initial weights one after the other from the global generator:
adding a task (a head built before another) or a modality changes every later part's start. Then a
multi-task model and its single-task models "with the same seed" start from different weights for the
parts they share, and a per-seed comparison of the two compares two initialisations as much as two ways of
training (issue #24: the decoders of the quickstart's seed-2 multi-task and single-task captioning models
started apart, and only one of them learned spatial relations).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch


def part_seed(base: int, name: str) -> int:
    """The seed of the part called ``name`` in a model built under seed ``base`` (stable across runs and
    machines: a hash, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{base}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_part(base: int, name: str) -> Iterator[None]:
    """Build a part inside this block: the CPU generator is seeded with :func:`part_seed` and restored
    afterwards, so what follows the block draws what it would have drawn without it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(part_seed(base, name))
        yield
