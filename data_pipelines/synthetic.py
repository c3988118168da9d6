"""Shapes world: a deterministic synthetic multimodal multi-task data set.

Every sample is a small picture of flat coloured shapes plus annotations for three tasks:

* recognition: multi-label ``"<colour> <shape>"`` tags of the objects in the picture;
* captioning: one canonical caption and two paraphrases, all derived from the picture only;
* summarization: a short document about the picture; its summary names the artist, a fact
  that is written only in the document and can never be seen in the image.

A sample depends only on ``(seed, index)`` and the difficulty, so any slice of the data set
can be regenerated on its own. All text is lower case, and punctuation is written as
separate space-delimited tokens (``"there is a red circle near the top left ."``), which is
also how open_clip's BPE tokenizer decodes it, so references round-trip exactly.

Canonical templates (deterministic given the scene):

* caption: ``"<A> <relation> <B>[ and <C>][ and <D>]"`` where every object phrase is
  ``"a <size> <colour> <shape>"``; A and B are the two largest objects (ties: leftmost, then
  topmost first), the relation ("left of", "right of", "above", "below") is A relative to B
  along the axis of larger displacement, and the remaining objects follow left to right.
  A single object is just ``"a <size> <colour> <shape>"``.
* summary: ``"<artist> drew <n> object(s) : <list>"`` where the list names ``"a <colour>
  <shape>"`` phrases in :func:`class_names` order (alphabetical), joined as
  ``"x"``, ``"x and y"`` or ``"x , y and z"``.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.modalities import AudioData, DepthData

SOURCE = "shapes_world"

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "yellow": (240, 205, 20),
    "purple": (140, 60, 180),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
# Half of the object's bounding-box side, as a fraction of the image side (~17% / ~30% full side).
SIZE_HALF_EXTENT: dict[str, float] = {"small": 0.085, "large": 0.15}
BACKGROUND_RGB: tuple[int, int, int] = (235, 235, 235)

NAMES: tuple[str, ...] = (
    "anna", "ben", "carla", "dan", "emma", "finn", "grace", "hugo", "ivy", "jack",
    "kate", "leo", "mia", "nora", "omar", "paul", "rosa", "sam", "tina", "zoe",
)
WEEKDAYS: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_MARGIN = 0.03  # keeps shapes off the image border
_GAP = 0.03  # minimum empty space between two objects' bounding boxes
_MAX_OBJECT_TRIES = 40
_MAX_SCENE_TRIES = 30
# The caption's relation must be readable from the image: the dominant displacement axis
# has to beat the other one by this factor, otherwise the scene is re-sampled.
_RELATION_CLARITY = 1.3
_MIN_SENTENCES = 6
_NOISE_FIELD_MIN_SIDE = 512  # 64 px images get (512 - 64 + 1) ** 2 distinct noise windows
_NOISE_FIELD_SEED = 20240601

_OPENERS = (
    "here is a short note about a picture .",
    "this note describes a simple drawing .",
    "the following text is about an image .",
    "let me tell you about a drawing .",
    "this is a description of a small picture .",
)
_FILLERS = (
    "the drawing is simple .",
    "the background is plain .",
    "everything is drawn with flat colours .",
    "the shapes are easy to see .",
    "nothing in the picture moves .",
)
_ARTIST_TEMPLATES = (
    "this picture was drawn by {artist} on {day} .",
    "{artist} drew this picture on {day} .",
    "the artist is {artist} , who made it on {day} .",
)
_ARTIST_REPEATS = (
    "{artist} is the artist .",
    "yes , it was {artist} who drew it .",
)
_OBJECT_TEMPLATES = (
    "there is {a} {colour} {shape} {where} .",
    "{a} {colour} {shape} is {where} .",
    "you can see {a} {colour} {shape} {where} .",
)
_OBJECT_REPEATS = (
    "once more , the {colour} {shape} is {where} .",
    "the picture also has {a} {colour} {shape} .",
    "so there is {a} {colour} {shape} {where} .",
)


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make the data set harder: more classes, objects, distractors and noise."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    min_objects: int
    max_objects: int
    distractor_sentences: int
    repeat_sentences: int
    noise: float

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours if c not in COLOUR_RGB] + [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes {unknown}; known: {sorted(COLOUR_RGB)} / {list(SHAPES)}")
        if not 1 <= self.min_objects <= self.max_objects <= min(4, len(self.colours) * len(self.shapes)):
            raise ValueError("need 1 <= min_objects <= max_objects <= min(4, number of classes)")
        if self.distractor_sentences < 0 or self.repeat_sentences < 0 or not 0.0 <= self.noise <= 1.0:
            raise ValueError("sentence counts must be >= 0 and noise in [0, 1]")


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(("red", "green", "blue"), ("circle", "square", "triangle"), 1, 2, 1, 0, 0.0),
    "medium": Difficulty(("red", "green", "blue", "yellow"), ("circle", "square", "triangle"), 1, 3, 2, 1, 0.03),
    "hard": Difficulty(tuple(COLOUR_RGB), SHAPES, 2, 4, 4, 2, 0.1),
}


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape; ``x``/``y`` is its centre in [0, 1] image coordinates (y points down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    @property
    def label(self) -> str:
        """Recognition class name, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A picture's content; ``artist`` and ``day`` are document-only facts, never drawn."""

    objects: tuple[ShapeObject, ...]
    artist: str
    day: str = "monday"


# --------------------------------------------------------------------------- scenes


def class_names(difficulty: Difficulty) -> list[str]:
    """Every ``"<colour> <shape>"`` recognition class of ``difficulty``, sorted alphabetically."""
    return sorted(f"{c} {s}" for c in difficulty.colours for s in difficulty.shapes)


def resolve_difficulty(difficulty: str | Difficulty) -> Difficulty:
    """A preset name ("easy", "medium", "hard") or a :class:`Difficulty` as a :class:`Difficulty`."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    try:
        return DIFFICULTIES[difficulty]
    except KeyError:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {sorted(DIFFICULTIES)}") from None


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
    a, b = _caption_order(objects)[:2]
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return max(dx, dy) >= _RELATION_CLARITY * min(dx, dy)


def _grid_place(pairs: list[tuple[str, str]], sizes: list[str]) -> tuple[ShapeObject, ...]:
    """Deterministic 2x2 placement, largest first, whose caption pair is never diagonal."""
    cells = ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73))
    order = sorted(range(len(pairs)), key=lambda i: sizes[i] != "large")
    return tuple(
        ShapeObject(pairs[i][1], pairs[i][0], sizes[i], x, y) for i, (x, y) in zip(order, cells)
    )


# --------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = 64, rng: random.Random | None = None, noise: float = 0.0) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image on a light background.

    ``noise`` in [0, 1] adds uniform per-pixel colour noise of that amplitude (fraction of 255)
    to the background only; it is drawn from ``rng`` (a fixed seed when ``rng`` is None).
    """
    image = _background(size, rng, noise)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, size)
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


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int, fill: int | tuple | None = None) -> None:
    """Fill one object's shape in its colour (or in ``fill``)."""
    cx, cy = obj.x * size, obj.y * size
    h = SIZE_HALF_EXTENT[obj.size] * size
    fill = COLOUR_RGB[obj.colour] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(((cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon(((cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)), fill=fill)
    elif obj.shape == "cross":
        arm = h / 3.0
        draw.rectangle((cx - h, cy - arm, cx + h, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - h, cx + arm, cy + h), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


# --------------------------------------------------------------------------- wording helpers


def _article(word: str) -> str:
    """Indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    """Plural of a shape name."""
    return noun + "es" if noun.endswith("s") else noun + "s"


def _count_word(n: int) -> str:
    """Small numbers as words, larger ones as digits."""
    return _COUNT_WORDS[n] if n < len(_COUNT_WORDS) else str(n)


def _sized_phrase(obj: ShapeObject) -> str:
    """``"a large red circle"``."""
    return f"{_article(obj.size)} {obj.size} {obj.colour} {obj.shape}"


def _plain_phrase(obj: ShapeObject) -> str:
    """``"a red circle"`` (no size)."""
    return f"{_article(obj.colour)} {obj.colour} {obj.shape}"


def _join_list(items: list[str]) -> str:
    """``"x"``, ``"x and y"``, ``"x , y and z"``."""
    if len(items) <= 2:
        return " and ".join(items)
    return " , ".join(items[:-1]) + " and " + items[-1]


def location_phrase(obj: ShapeObject) -> str:
    """Coarse position on a 3x3 grid, e.g. ``"near the top left"`` or ``"in the middle"``."""
    row = "top" if obj.y < 1 / 3 else "bottom" if obj.y > 2 / 3 else ""
    col = "left" if obj.x < 1 / 3 else "right" if obj.x > 2 / 3 else ""
    if not row and not col:
        return "in the middle"
    return "near the " + " ".join(w for w in (row, col) if w)


def spatial_relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis of larger displacement (y points down)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _caption_order(objects: tuple[ShapeObject, ...]) -> list[ShapeObject]:
    """Large objects first; ties broken leftmost, then topmost."""
    return sorted(objects, key=lambda o: (o.size != "large", o.x, o.y))


def _left_to_right(objects: list[ShapeObject]) -> list[ShapeObject]:
    """Objects ordered by x, then y."""
    return sorted(objects, key=lambda o: (o.x, o.y))


# --------------------------------------------------------------------------- captions


def canonical_caption(scene: Scene) -> str:
    """The deterministic caption: main pair with its relation, then the rest left to right."""
    ordered = _caption_order(scene.objects)
    if len(ordered) == 1:
        return _sized_phrase(ordered[0])
    a, b = ordered[0], ordered[1]
    head = f"{_sized_phrase(a)} {spatial_relation(a, b)} {_sized_phrase(b)}"
    return " and ".join([head] + [_sized_phrase(o) for o in _left_to_right(ordered[2:])])


def _inverse_caption(scene: Scene) -> str:
    """The canonical caption with the main pair swapped and the relation inverted."""
    ordered = _caption_order(scene.objects)
    a, b = ordered[0], ordered[1]
    head = f"{_sized_phrase(b)} {_INVERSE_RELATION[spatial_relation(a, b)]} {_sized_phrase(a)}"
    return " and ".join([head] + [_sized_phrase(o) for o in _left_to_right(ordered[2:])])


def _enumeration_caption(scene: Scene) -> str:
    """``"two shapes : a large red circle and a small blue square"`` (left to right)."""
    n = len(scene.objects)
    phrases = [_sized_phrase(o) for o in _left_to_right(list(scene.objects))]
    return f"{_count_word(n)} shape{'' if n == 1 else 's'} : " + " and ".join(phrases)


def make_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Three captions: the canonical one first, then two distinct paraphrases chosen by ``rng``."""
    canonical = canonical_caption(scene)
    options = [f"a picture of {canonical}", f"there is {canonical}", _enumeration_caption(scene)]
    if len(scene.objects) >= 2:
        options.append(_inverse_caption(scene))
    return [canonical] + rng.sample(options, 2)


# --------------------------------------------------------------------------- document


def _object_sentence(obj: ShapeObject, templates: tuple[str, ...], rng: random.Random) -> str:
    """One sentence stating an object's colour, shape and (maybe) location."""
    return rng.choice(templates).format(
        a=_article(obj.colour), colour=obj.colour, shape=obj.shape, where=location_phrase(obj)
    )


def _repeat_sentences(scene: Scene, rng: random.Random, count: int) -> list[str]:
    """Paraphrased repetitions of up to ``count`` distinct scene facts (artist or objects)."""
    facts: list[ShapeObject | None] = [None, *scene.objects]  # None stands for the artist fact
    sentences = []
    for fact in rng.sample(facts, min(count, len(facts))):
        if fact is None:
            sentences.append(rng.choice(_ARTIST_REPEATS).format(artist=scene.artist))
        else:
            sentences.append(_object_sentence(fact, _OBJECT_REPEATS, rng))
    return sentences


def _absent_classes(scene: Scene, difficulty: Difficulty) -> list[tuple[str, str]]:
    """(colour, shape) pairs not in the scene, preferring colours the scene does not use at all."""
    present_colours = {o.colour for o in scene.objects}
    present = {(o.colour, o.shape) for o in scene.objects}
    pairs = [(c, s) for c in difficulty.colours for s in difficulty.shapes]
    unused_colour = [p for p in pairs if p[0] not in present_colours]
    return unused_colour or [p for p in pairs if p not in present]


def _friend_likes(rng: random.Random, absent: list[tuple[str, str]], others: list[str]) -> str:
    """A friend of the artist likes an absent class."""
    colour, shape = rng.choice(absent)
    return f"the artist has a friend called {rng.choice(others)} who likes {colour} {_plural(shape)} ."


def _there_is_no(rng: random.Random, absent: list[tuple[str, str]], others: list[str]) -> str:
    """An explicit negation of an absent class."""
    colour, shape = rng.choice(absent)
    return f"there is no {colour} {shape} in this picture ."


def _did_not_draw(rng: random.Random, absent: list[tuple[str, str]], others: list[str]) -> str:
    """A different person explicitly did not draw the picture."""
    return f"{rng.choice(others)} did not draw this picture ."


def _once_drew(rng: random.Random, absent: list[tuple[str, str]], others: list[str]) -> str:
    """A different person drew an absent class somewhere else."""
    colour, shape = rng.choice(absent)
    return f"{rng.choice(others)} once drew {_article(colour)} {colour} {shape} at school ."


_Distractor = Callable[[random.Random, list[tuple[str, str]], list[str]], str]
_CLASS_DISTRACTORS: tuple[_Distractor, ...] = (_friend_likes, _there_is_no, _once_drew)
_NAME_DISTRACTORS: tuple[_Distractor, ...] = (_did_not_draw,)


def _distractor_sentences(scene: Scene, rng: random.Random, difficulty: Difficulty) -> list[str]:
    """Distinct sentences naming colours, shapes or people that are clearly not in the scene."""
    absent = _absent_classes(scene, difficulty)
    others = [n for n in NAMES if n != scene.artist]
    kinds = _NAME_DISTRACTORS + (_CLASS_DISTRACTORS if absent else ())
    sentences: list[str] = []
    for _ in range(10 * difficulty.distractor_sentences):  # bounded: duplicates are re-drawn
        if len(sentences) == difficulty.distractor_sentences:
            break
        sentence = rng.choice(kinds)(rng, absent, others)
        if sentence not in sentences:
            sentences.append(sentence)
    return sentences


def make_document(scene: Scene, rng: random.Random, difficulty: Difficulty) -> str:
    """The document: a fact-free opener, then shuffled artist, object, repeat, distractor sentences.

    Short documents are padded with fact-free filler sentences up to six sentences.
    """
    body = [rng.choice(_ARTIST_TEMPLATES).format(artist=scene.artist, day=scene.day)]
    body += [_object_sentence(obj, _OBJECT_TEMPLATES, rng) for obj in scene.objects]
    body += _repeat_sentences(scene, rng, difficulty.repeat_sentences)
    body += _distractor_sentences(scene, rng, difficulty)
    body += rng.sample(_FILLERS, max(0, min(len(_FILLERS), _MIN_SENTENCES - 1 - len(body))))
    rng.shuffle(body)
    return " ".join([rng.choice(_OPENERS), *body])


def split_sentences(document: str) -> list[str]:
    """Sentences of a shapes-world document, each ending in ``" ."``."""
    return [s.strip() + " ." for s in document.split(" .") if s.strip()]


# --------------------------------------------------------------------------- summaries


def _summary_objects(scene: Scene) -> tuple[int, str]:
    """Object count and ``"a red circle and a blue square"``-style list in class_names order."""
    ordered = sorted(scene.objects, key=lambda o: o.label)
    return len(ordered), _join_list([_plain_phrase(o) for o in ordered])


def canonical_summary(scene: Scene) -> str:
    """``"anna drew 2 objects : a blue square and a red circle"`` (deterministic)."""
    n, listing = _summary_objects(scene)
    return f"{scene.artist} drew {n} object{'' if n == 1 else 's'} : {listing}"


def _summary_paraphrase(scene: Scene) -> str:
    """``"2 objects drawn by anna : a blue square and a red circle"``."""
    n, listing = _summary_objects(scene)
    return f"{n} object{'' if n == 1 else 's'} drawn by {scene.artist} : {listing}"


# --------------------------------------------------------------------------- samples


def scene_labels(scene: Scene) -> list[str]:
    """Sorted recognition class names of the scene's objects."""
    return sorted(o.label for o in scene.objects)


def annotate(scene: Scene, rng: random.Random, difficulty: Difficulty) -> dict:
    """Labels, three captions, a document and two reference summaries for ``scene``."""
    return {
        "labels": scene_labels(scene),
        "captions": make_captions(scene, rng),
        "document": make_document(scene, rng, difficulty),
        "summaries": [canonical_summary(scene), _summary_paraphrase(scene)],
        "source": SOURCE,
    }


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


# --------------------------------------------------------------------------- depth and sound

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
        _draw_object(draw, obj, size, fill=level)
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
    import io
    import wave as wavefile

    buffer = io.BytesIO()
    with wavefile.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


# modality -> (sample key, (scene, seed, index, image size) -> encoded bytes)
SYNTH_MODALITIES: dict[str, tuple[str, Callable[[Scene, int, int, int], bytes]]] = {
    "depth": (DepthData.sample_keys[0], lambda scene, seed, index, size: _encode_png(
        render_depth(scene, size, extra_rng(seed, index, "depth")))),
    "audio": (AudioData.sample_keys[0], lambda scene, seed, index, size: encode_wav(
        render_audio(scene, extra_rng(seed, index, "audio")), AUDIO_SAMPLE_RATE)),
}


def _encode_png(image: Image.Image) -> bytes:
    from data_pipelines.shards import encode_image

    return encode_image(image)


def iter_samples(
    num: int,
    seed: int,
    difficulty: str | Difficulty = "medium",
    image_size: int = 64,
    start: int = 0,
) -> Iterator[tuple[dict, Image.Image]]:
    """Samples ``start`` .. ``start + num - 1`` of the data set ``seed``."""
    resolved = resolve_difficulty(difficulty)
    for index in range(start, start + num):
        yield generate_sample(index, seed, resolved, image_size)


# Disjoint index ranges keep the splits free of shared samples for any split size below 10**9.
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def write_shards(out_dir: str | Path, sizes: dict[str, int], seed: int = 0, difficulty: str = "medium",
                 image_size: int = 64, shard_size: int = 1000, modalities: Sequence[str] = ("image",),
                 count: bool = False) -> dict:
    """Write shapes world as webdataset shards (``{split}-NNNNNN.tar``) plus ``dataset.json``; returns the info.

    ``modalities``: which renderings of each scene a sample carries: ``image`` (png), ``depth``
    (``depth.png``), ``audio`` (``wav``). ``count``: add the ``count`` annotation (number of objects).
    """
    from data_pipelines.shards import encode_image, write_dataset_info, write_split

    unknown = [m for m in modalities if m != "image" and m not in SYNTH_MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"unknown synthetic modalities {unknown}; choose from image, {', '.join(SYNTH_MODALITIES)}")
    out = Path(out_dir)
    level = resolve_difficulty(difficulty)
    stats = {}
    for split, num in sizes.items():
        start = SPLIT_OFFSETS.get(split, 3_000_000_000)
        samples = (_sample(split, start + i, seed, level, image_size, modalities, count) for i in range(num))
        stats[split] = write_split(out, split, samples, shard_size)
    options = {"generator": "shapes_world", "seed": seed, "difficulty": difficulty, "image_size": image_size,
               "sizes": sizes}
    if tuple(modalities) != ("image",) or count:
        options.update(modalities=list(modalities), count=count)
    return write_dataset_info(out, SOURCE, stats, class_names(level), options)


def _sample(split: str, index: int, seed: int, level: Difficulty, image_size: int, modalities: Sequence[str],
            count: bool) -> dict:
    """One webdataset sample of scene ``index`` with the asked-for renderings."""
    from data_pipelines.shards import encode_image

    annotation, image, scene = generate_scene_sample(index, seed, level, image_size)
    sample: dict = {"__key__": f"{split}-{index:010d}"}
    if "image" in modalities:
        sample["png"] = encode_image(image)
    for name in modalities:
        if name in SYNTH_MODALITIES:
            key, render_bytes = SYNTH_MODALITIES[name]
            sample[key] = render_bytes(scene, seed, index, image_size)
    if count:
        annotation["count"] = len(scene.objects)
    sample["json"] = annotation
    return sample
