"""Further renderings of a scene for the depth and audio modalities: a depth map and a sound.

Each has its own random stream (:func:`extra_rng`), so adding a modality changes nothing in the
picture or the annotations of a sample.
"""
from __future__ import annotations

import hashlib
import io
import random
import wave as wavefile

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.shapes_world.render import draw_object
from data_pipelines.shapes_world.world import COLOUR_RGB, SHAPES, Scene
from data_pipelines.shards import encode_image

# Shapes world's physics: every colour stands at its own distance (nearer = brighter in the depth
# map), so a depth map shows colour as depth and shape as outline.
DEPTH_BY_COLOUR: dict[str, int] = {"red": 240, "green": 210, "blue": 180, "yellow": 150, "purple": 120, "orange": 90}
_DEPTH_JITTER = 6  # per-object depth varies by up to this much around its colour's level
_DEPTH_FLOOR = (20, 60)  # the background floor: far at the top, nearer at the bottom
AUDIO_SAMPLE_RATE = 8000
AUDIO_SECONDS = 1.0


def extra_rng(seed: int, index: int, what: str) -> random.Random:
    """A generator for ``what`` (depth, audio) of sample ``index``, independent of the sample's own stream,
    so adding a modality changes nothing in the image or the annotations."""
    digest = hashlib.sha256(f"{seed}:{index}:{what}".encode("ascii")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def render_depth(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """The scene as an 8-bit depth map ("L"): a floor receding upwards, each object at its colour's depth."""
    floor = np.linspace(_DEPTH_FLOOR[0], _DEPTH_FLOOR[1], size, dtype=np.float32)[:, None].repeat(size, 1)
    noise = np.random.default_rng(rng.getrandbits(32)).uniform(-3, 3, (size, size)).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(floor + noise), 0, 255).astype(np.uint8), "L")
    draw = ImageDraw.Draw(image)
    for obj in sorted(scene.objects, key=lambda o: DEPTH_BY_COLOUR[o.colour]):  # far objects first
        level = DEPTH_BY_COLOUR[obj.colour] + rng.randint(-_DEPTH_JITTER, _DEPTH_JITTER)
        draw_object(draw, obj, size, fill=level)
    return image


def tone_frequency(colour: str, shape: str) -> float:
    """Pitch of a class: one of 30 notes 1/7 octave apart from 150 Hz, by (colour, shape)."""
    index = list(COLOUR_RGB).index(colour) * len(SHAPES) + SHAPES.index(shape)
    return 150.0 * 2.0 ** (index / 7.0)


def render_audio(scene: Scene, rng: random.Random, sample_rate: int = AUDIO_SAMPLE_RATE,
                 seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """The scene as a sound: one tone per object at its class's pitch, loud for large objects, sounding
    from left to right (onsets by x), plus faint noise. float32 in [-1, 1]."""
    samples = int(round(sample_rate * seconds))
    t = np.arange(samples, dtype=np.float64) / sample_rate
    wave = np.zeros(samples, dtype=np.float64)
    for obj in scene.objects:
        onset = 0.5 * obj.x * seconds
        envelope = np.clip((t - onset) / 0.02, 0.0, 1.0) * np.clip((seconds - t) / 0.02, 0.0, 1.0)
        amplitude = 0.3 if obj.size == "large" else 0.15
        phase = rng.uniform(0.0, 2.0 * np.pi)
        wave += amplitude * envelope * np.sin(2.0 * np.pi * tone_frequency(obj.colour, obj.shape) * t + phase)
    wave += np.random.default_rng(rng.getrandbits(32)).normal(0.0, 0.005, samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def encode_wav(wave: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV bytes (standard library only)."""
    buffer = io.BytesIO()
    with wavefile.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def depth_png(scene: Scene, image: Image.Image, seed: int, index: int) -> bytes:
    """The depth map of sample ``index`` (as large as its picture) as PNG bytes."""
    return encode_image(render_depth(scene, image.width, extra_rng(seed, index, "depth")))


def audio_wav(scene: Scene, image: Image.Image, seed: int, index: int) -> bytes:
    """The sound of sample ``index`` as WAV bytes."""
    return encode_wav(render_audio(scene, extra_rng(seed, index, "audio")), AUDIO_SAMPLE_RATE)
