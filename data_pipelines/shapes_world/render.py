"""Drawing a scene: flat coloured shapes on a light, optionally noisy, background."""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.shapes_world.world import BACKGROUND_RGB, COLOUR_RGB, SIZE_HALF_EXTENT, Scene, ShapeObject

_NOISE_FIELD_MIN_SIDE = 512  # 64 px images get (512 - 64 + 1) ** 2 distinct noise windows
_NOISE_FIELD_SEED = 20240601


def render(scene: Scene, size: int = 64, rng: random.Random | None = None, noise: float = 0.0) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image on a light background.

    ``noise`` in [0, 1] adds uniform per-pixel colour noise of that amplitude (fraction of 255)
    to the background only; it is drawn from ``rng`` (a fixed seed when ``rng`` is None).
    """
    image = _background(size, rng, noise)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj, size)
    return image


def _background(size: int, rng: random.Random | None, noise: float) -> Image.Image:
    """Plain light background, optionally a random window of a fixed noise field."""
    if noise <= 0.0:
        return Image.new("RGB", (size, size), BACKGROUND_RGB)
    # Cropping a cached noise field is ~20x faster than drawing fresh per-pixel noise, which
    # would dominate the cost of a sample; pixels inside one window are still independent.
    field = _noise_field(size, noise)
    span = field.width - size
    rng = rng if rng is not None else random.Random(0)
    left, top = rng.randint(0, span), rng.randint(0, span)
    return field.crop((left, top, left + size, top + size))


@lru_cache(maxsize=8)
def _noise_field(size: int, noise: float) -> Image.Image:
    """A fixed-seed background with uniform per-pixel colour noise of amplitude ``noise`` * 255."""
    side = max(2 * size, _NOISE_FIELD_MIN_SIDE)
    generator = np.random.default_rng(_NOISE_FIELD_SEED)
    unit = generator.random((side, side, 3), dtype=np.float32) * 2.0 - 1.0
    pixels = np.asarray(BACKGROUND_RGB, dtype=np.float32) + noise * 255.0 * unit
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


Fill = int | tuple[int, int, int]


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, h: float, fill: Fill) -> None:
    arm = h / 3.0
    draw.rectangle((cx - h, cy - arm, cx + h, cy + arm), fill=fill)
    draw.rectangle((cx - arm, cy - h, cx + arm, cy + h), fill=fill)


# shape -> fills the shape centred at (cx, cy) with half side h
_OUTLINES: dict[str, Callable[[ImageDraw.ImageDraw, float, float, float, Fill], None]] = {
    "circle": lambda draw, cx, cy, h, fill: draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill),
    "square": lambda draw, cx, cy, h, fill: draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill),
    "triangle": lambda draw, cx, cy, h, fill: draw.polygon(((cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)),
                                                           fill=fill),
    "diamond": lambda draw, cx, cy, h, fill: draw.polygon(((cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)),
                                                          fill=fill),
    "cross": _cross,
}


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int, fill: Fill | None = None) -> None:
    """Fill one object's shape in its colour (or in ``fill``)."""
    h = SIZE_HALF_EXTENT[obj.size] * size
    fill = COLOUR_RGB[obj.colour] if fill is None else fill
    if obj.shape not in _OUTLINES:
        raise ValueError(f"unknown shape {obj.shape!r}")
    _OUTLINES[obj.shape](draw, obj.x * size, obj.y * size, h, fill)
