"""Shapes world's words: the captions, the document and the summaries of a scene (see the package docstring)."""
from __future__ import annotations

import random
from typing import Callable

from data_pipelines.shapes_world.world import NAMES, SOURCE, Difficulty, Scene, ShapeObject, caption_order

_INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MIN_SENTENCES = 6
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


def _left_to_right(objects: list[ShapeObject]) -> list[ShapeObject]:
    """Objects ordered by x, then y."""
    return sorted(objects, key=lambda o: (o.x, o.y))


# --------------------------------------------------------------------------- captions


def canonical_caption(scene: Scene) -> str:
    """The deterministic caption: main pair with its relation, then the rest left to right."""
    ordered = caption_order(scene.objects)
    if len(ordered) == 1:
        return _sized_phrase(ordered[0])
    a, b = ordered[0], ordered[1]
    head = f"{_sized_phrase(a)} {spatial_relation(a, b)} {_sized_phrase(b)}"
    return " and ".join([head] + [_sized_phrase(o) for o in _left_to_right(ordered[2:])])


def _inverse_caption(scene: Scene) -> str:
    """The canonical caption with the main pair swapped and the relation inverted."""
    ordered = caption_order(scene.objects)
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


# --------------------------------------------------------------------------- annotations


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
