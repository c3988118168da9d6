"""One shapes-world sample: a scene, its picture and its annotations, from ``(seed, index)`` alone."""
from __future__ import annotations

import hashlib
import random

from PIL import Image

from data_pipelines.shapes_world.language import annotate
from data_pipelines.shapes_world.placement import make_scene
from data_pipelines.shapes_world.render import render
from data_pipelines.shapes_world.world import Difficulty, Scene


def sample_rng(seed: int, index: int) -> random.Random:
    """A generator seeded stably (SHA-256, not ``hash()``) from ``(seed, index)``."""
    digest = hashlib.sha256(f"{seed}:{index}".encode("ascii")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_sample(index: int, seed: int, difficulty: Difficulty, image_size: int = 64) -> tuple[dict, Image.Image]:
    """Sample ``index`` of the data set ``seed``: its annotation dict and RGB image."""
    annotation, image, _ = generate_scene_sample(index, seed, difficulty, image_size)
    return annotation, image


def generate_scene_sample(index: int, seed: int, difficulty: Difficulty,
                          image_size: int = 64) -> tuple[dict, Image.Image, Scene]:
    """:func:`generate_sample` plus the scene it draws (for the depth map and sound of the same scene)."""
    rng = sample_rng(seed, index)
    scene = make_scene(rng, difficulty)
    image = render(scene, image_size, rng, difficulty.noise)
    return annotate(scene, rng, difficulty), image, scene
