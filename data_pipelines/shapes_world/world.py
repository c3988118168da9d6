"""Shapes world's vocabulary: colours, shapes, sizes, people, difficulty presets, and the scene types."""
from __future__ import annotations

from dataclasses import dataclass

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


def caption_order(objects: tuple[ShapeObject, ...]) -> list[ShapeObject]:
    """Large objects first; ties broken leftmost, then topmost (the caption's main pair comes first)."""
    return sorted(objects, key=lambda o: (o.size != "large", o.x, o.y))
