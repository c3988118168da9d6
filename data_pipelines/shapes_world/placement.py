"""Where a scene's objects go: rejection-sampled apart from each other, so that the caption's spatial
relation is readable from the picture; a fixed grid when sampling keeps failing."""
from __future__ import annotations

import random

from data_pipelines.shapes_world.world import (
    NAMES, SIZE_HALF_EXTENT, SIZES, WEEKDAYS, Difficulty, Scene, ShapeObject, caption_order,
)

_MARGIN = 0.03  # keeps shapes off the image border
_GAP = 0.03  # minimum empty space between two objects' bounding boxes
_MAX_OBJECT_TRIES = 40
_MAX_SCENE_TRIES = 30
# The caption's relation must be readable from the image: the dominant displacement axis
# has to beat the other one by this factor, otherwise the scene is re-sampled.
_RELATION_CLARITY = 1.3


def make_scene(rng: random.Random, difficulty: Difficulty) -> Scene:
    """Sample a scene: distinct (colour, shape) objects without overlap, an artist and a day."""
    count = rng.randint(difficulty.min_objects, difficulty.max_objects)
    pairs = rng.sample([(c, s) for c in difficulty.colours for s in difficulty.shapes], count)
    sizes = [rng.choice(SIZES) for _ in pairs]
    objects = _place_objects(rng, pairs, sizes)
    return Scene(objects=objects, artist=rng.choice(NAMES), day=rng.choice(WEEKDAYS))


def _place_objects(rng: random.Random, pairs: list[tuple[str, str]], sizes: list[str]) -> tuple[ShapeObject, ...]:
    """Rejection-sample positions; fall back to a fixed grid after a bounded number of tries."""
    for _ in range(_MAX_SCENE_TRIES):
        objects = _try_place(rng, pairs, sizes)
        if objects is not None and _relation_is_clear(objects):
            return objects
    return _grid_place(pairs, sizes)


def _try_place(rng: random.Random, pairs: list[tuple[str, str]], sizes: list[str]) -> tuple[ShapeObject, ...] | None:
    """One attempt at placing every object; None if some object found no free spot."""
    placed: list[ShapeObject] = []
    for (colour, shape), size in zip(pairs, sizes):
        half = SIZE_HALF_EXTENT[size]
        low, high = half + _MARGIN, 1.0 - half - _MARGIN
        for _ in range(_MAX_OBJECT_TRIES):
            candidate = ShapeObject(shape, colour, size, rng.uniform(low, high), rng.uniform(low, high))
            if all(_separated(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def _separated(a: ShapeObject, b: ShapeObject) -> bool:
    """True when the two objects' bounding boxes are apart by at least ``_GAP``."""
    needed = SIZE_HALF_EXTENT[a.size] + SIZE_HALF_EXTENT[b.size] + _GAP
    return max(abs(a.x - b.x), abs(a.y - b.y)) >= needed


def _relation_is_clear(objects: tuple[ShapeObject, ...]) -> bool:
    """True when the caption's pair is displaced clearly more along one axis than the other."""
    if len(objects) < 2:
        return True
    a, b = caption_order(objects)[:2]
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return max(dx, dy) >= _RELATION_CLARITY * min(dx, dy)


def _grid_place(pairs: list[tuple[str, str]], sizes: list[str]) -> tuple[ShapeObject, ...]:
    """Deterministic 2x2 placement, largest first, whose caption pair is never diagonal."""
    cells = ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73))
    order = sorted(range(len(pairs)), key=lambda i: sizes[i] != "large")
    return tuple(
        ShapeObject(pairs[i][1], pairs[i][0], sizes[i], x, y) for i, (x, y) in zip(order, cells)
    )
