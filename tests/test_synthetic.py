"""Tests for the shapes-world synthetic data set (data_pipelines.shapes_world)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.shapes_world import (
    COLOUR_RGB,
    DIFFICULTIES,
    SIZE_HALF_EXTENT,
    Difficulty,
    Scene,
    ShapeObject,
    annotate,
    class_names,
    generate_sample,
    make_scene,
    render,
    resolve_difficulty,
)

MEDIUM = DIFFICULTIES["medium"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def iter_samples(num: int, seed: int, difficulty: str = "medium", image_size: int = 64, start: int = 0):
    """Samples ``start`` .. ``start + num - 1`` of the data set ``seed``."""
    resolved = resolve_difficulty(difficulty)
    for index in range(start, start + num):
        yield generate_sample(index, seed, resolved, image_size)


def split_sentences(document: str) -> list[str]:
    """Sentences of a shapes-world document, each ending in ``" ."``."""
    return [s.strip() + " ." for s in document.split(" .") if s.strip()]


def _colour_pixels(image, colour: str, tolerance: int = 12) -> int:
    """Number of pixels within ``tolerance`` (per channel) of a named colour."""
    pixels = np.asarray(image, dtype=np.int16)
    target = np.asarray(COLOUR_RGB[colour], dtype=np.int16)
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def _scene(*objects: ShapeObject, artist: str = "anna") -> Scene:
    """A hand-built scene."""
    return Scene(objects=tuple(objects), artist=artist, day="monday")


def _words(text: str) -> set[str]:
    """Whitespace-separated words of ``text``."""
    return set(text.split())


# ------------------------------------------------------------------ determinism


def test_same_seed_and_index_give_identical_samples() -> None:
    for difficulty in DIFFICULTIES.values():
        first_ann, first_img = generate_sample(7, 123, difficulty)
        second_ann, second_img = generate_sample(7, 123, difficulty)
        assert first_ann == second_ann
        assert first_img.tobytes() == second_img.tobytes()


def test_different_seeds_and_indices_differ() -> None:
    by_seed_0 = [ann for ann, _ in iter_samples(20, seed=0)]
    by_seed_1 = [ann for ann, _ in iter_samples(20, seed=1)]
    assert sum(a != b for a, b in zip(by_seed_0, by_seed_1)) >= 18
    documents = {ann["document"] for ann in by_seed_0}
    assert len(documents) == 20


def test_start_offset_matches_tail_of_longer_run() -> None:
    full = list(iter_samples(12, seed=5, difficulty="hard"))
    tail = list(iter_samples(4, seed=5, difficulty="hard", start=8))
    assert [a for a, _ in tail] == [a for a, _ in full[8:]]
    assert [i.tobytes() for _, i in tail] == [i.tobytes() for _, i in full[8:]]


def test_samples_do_not_depend_on_python_hash_seed() -> None:
    code = (
        "import hashlib; from data_pipelines.shapes_world import generate_sample, DIFFICULTIES\n"
        "ann, img = generate_sample(3, 11, DIFFICULTIES['hard'])\n"
        "print(hashlib.sha256(repr(ann).encode() + img.tobytes()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(result.stdout.strip())
    assert len(digests) == 1


# ------------------------------------------------------------------ scenes and labels


@pytest.mark.parametrize("name", sorted(DIFFICULTIES))
def test_scenes_respect_difficulty_and_do_not_overlap(name: str) -> None:
    difficulty = DIFFICULTIES[name]
    rng = random.Random(0)
    for _ in range(300):
        scene = make_scene(rng, difficulty)
        objects = scene.objects
        assert difficulty.min_objects <= len(objects) <= difficulty.max_objects
        assert len({(o.colour, o.shape) for o in objects}) == len(objects)
        for obj in objects:
            assert obj.colour in difficulty.colours and obj.shape in difficulty.shapes
            half = SIZE_HALF_EXTENT[obj.size]
            assert half <= obj.x <= 1 - half and half <= obj.y <= 1 - half
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                reach = SIZE_HALF_EXTENT[a.size] + SIZE_HALF_EXTENT[b.size]
                assert max(abs(a.x - b.x), abs(a.y - b.y)) >= reach


def test_grid_fallback_places_objects_apart_with_a_clear_relation() -> None:
    from data_pipelines.shapes_world.placement import _grid_place, _relation_is_clear, _separated

    pairs = [("red", "circle"), ("blue", "square"), ("green", "cross"), ("yellow", "diamond")]
    for sizes in (["large"] * 4, ["small", "large", "small", "large"], ["small", "small", "large", "small"]):
        objects = _grid_place(pairs, sizes)
        assert [(o.colour, o.shape, o.size) for o in sorted(objects, key=lambda o: o.colour)] == sorted(
            (c, s, z) for (c, s), z in zip(pairs, sizes)
        )
        assert all(_separated(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :])
        assert _relation_is_clear(objects)


def test_labels_match_scene_objects_and_class_names() -> None:
    rng = random.Random(1)
    names = class_names(MEDIUM)
    assert names == sorted(names) and len(names) == len(set(names)) == 12
    assert "red circle" in names
    for _ in range(100):
        scene = make_scene(rng, MEDIUM)
        labels = annotate(scene, rng, MEDIUM)["labels"]
        assert labels == sorted(f"{o.colour} {o.shape}" for o in scene.objects)
        assert set(labels) <= set(names)


# ------------------------------------------------------------------ rendering


def test_rendered_image_contains_every_object_colour() -> None:
    for ann, image in iter_samples(30, seed=2, difficulty="hard"):
        assert image.mode == "RGB" and image.size == (64, 64)
        scene_colours = {label.split()[0] for label in ann["labels"]}
        for colour in DIFFICULTIES["hard"].colours:
            count = _colour_pixels(image, colour)
            assert (count >= 20) if colour in scene_colours else (count == 0), (colour, ann["labels"])


@pytest.mark.parametrize("shape", DIFFICULTIES["hard"].shapes)
def test_large_objects_cover_clearly_more_pixels_than_small(shape: str) -> None:
    areas = {}
    for size in ("small", "large"):
        image = render(_scene(ShapeObject(shape, "blue", size, 0.5, 0.5)), size=64)
        areas[size] = _colour_pixels(image, "blue")
    assert areas["small"] >= 20
    assert areas["large"] >= 2 * areas["small"]


def test_noise_changes_background_only_and_is_seeded() -> None:
    scene = _scene(ShapeObject("square", "red", "large", 0.5, 0.5))
    plain = np.asarray(render(scene, 64))
    noisy = np.asarray(render(scene, 64, random.Random(3), noise=0.1)).astype(int)
    again = np.asarray(render(scene, 64, random.Random(3), noise=0.1)).astype(int)
    other = np.asarray(render(scene, 64, random.Random(4), noise=0.1)).astype(int)
    assert (noisy == again).all() and not (noisy == other).all()
    background = (plain != np.asarray(COLOUR_RGB["red"])).any(axis=-1)
    assert np.unique(plain[background].reshape(-1, 3), axis=0).shape[0] == 1
    assert noisy[background].std() > 5 and np.abs(noisy[background] - plain[background]).max() <= 26
    assert (noisy[~background] == plain[~background]).all()


# ------------------------------------------------------------------ captions


@pytest.mark.parametrize(
    ("a_xy", "b_xy", "expected"),
    [
        ((0.25, 0.5), (0.75, 0.5), "a large red circle left of a small blue square"),
        ((0.8, 0.4), (0.2, 0.6), "a large red circle right of a small blue square"),
        ((0.5, 0.2), (0.45, 0.8), "a large red circle above a small blue square"),
        ((0.5, 0.8), (0.6, 0.2), "a large red circle below a small blue square"),
    ],
)
def test_canonical_caption_relation_matches_positions(a_xy, b_xy, expected) -> None:
    scene = _scene(ShapeObject("circle", "red", "large", *a_xy), ShapeObject("square", "blue", "small", *b_xy))
    captions = annotate(scene, random.Random(0), MEDIUM)["captions"]
    assert captions[0] == expected
    assert len(captions) == 3 and len(set(captions)) == 3


def test_canonical_caption_orders_ties_and_extra_objects() -> None:
    scene = _scene(
        ShapeObject("triangle", "green", "small", 0.8, 0.8),
        ShapeObject("square", "blue", "large", 0.7, 0.2),
        ShapeObject("circle", "red", "large", 0.2, 0.25),
        ShapeObject("square", "yellow", "small", 0.2, 0.8),
    )
    expected = (
        "a large red circle left of a large blue square"
        " and a small yellow square and a small green triangle"
    )
    assert annotate(scene, random.Random(0), MEDIUM)["captions"][0] == expected
    assert annotate(_scene(scene.objects[2]), random.Random(0), MEDIUM)["captions"][0] == "a large red circle"


def test_canonical_texts_do_not_depend_on_the_annotation_rng() -> None:
    scene = make_scene(random.Random(9), DIFFICULTIES["hard"])
    first = annotate(scene, random.Random(1), DIFFICULTIES["hard"])
    second = annotate(scene, random.Random(2), DIFFICULTIES["hard"])
    assert first["captions"][0] == second["captions"][0]
    assert first["summaries"] == second["summaries"]
    assert first["document"] != second["document"]


# ------------------------------------------------------------------ document and summary


def test_artist_only_in_document_and_summary() -> None:
    for ann, _ in iter_samples(50, seed=3):
        summary = ann["summaries"][0]
        artist = summary.split()[0]
        assert all(artist in _words(s) for s in ann["summaries"])
        assert artist in _words(ann["document"])
        assert not any(artist in _words(c) for c in ann["captions"])


def test_summary_lists_the_scene_objects_in_class_name_order() -> None:
    rng = random.Random(4)
    for _ in range(50):
        scene = make_scene(rng, DIFFICULTIES["hard"])
        summary = annotate(scene, rng, DIFFICULTIES["hard"])["summaries"][0]
        n = len(scene.objects)
        assert summary.startswith(f"{scene.artist} drew {n} object{'' if n == 1 else 's'} : ")
        positions = [summary.index(f" {label}") for label in sorted(o.label for o in scene.objects)]
        assert positions == sorted(positions)


def test_document_states_each_object_and_distractors_are_not_in_scene() -> None:
    for ann, _ in iter_samples(50, seed=6, difficulty="hard"):
        document = ann["document"]
        for label in ann["labels"]:
            assert f" {label} " in document
        for sentence in split_sentences(document):
            if sentence.startswith("there is no "):
                negated = " ".join(sentence.split()[3:5])
                assert negated not in ann["labels"]


def test_first_sentence_carries_no_scene_facts() -> None:
    for name, difficulty in DIFFICULTIES.items():
        for ann, _ in iter_samples(40, seed=8, difficulty=name):
            first = _words(split_sentences(ann["document"])[0])
            artist = ann["summaries"][0].split()[0]
            assert not first & set(difficulty.colours), first
            assert not first & set(difficulty.shapes), first
            assert artist not in first


# ------------------------------------------------------------------ presets and speed


@pytest.mark.parametrize("name", sorted(DIFFICULTIES))
def test_every_preset_generates_valid_samples(name: str) -> None:
    difficulty = DIFFICULTIES[name]
    for ann, image in iter_samples(40, seed=10, difficulty=name, image_size=48):
        assert set(ann) == {"labels", "captions", "document", "summaries", "source"}
        assert ann["source"] == "shapes_world"
        assert difficulty.min_objects <= len(ann["labels"]) <= difficulty.max_objects
        assert len(ann["captions"]) == 3 and len(ann["captions"][0].split()) <= 20
        assert 6 <= len(split_sentences(ann["document"])) <= 12
        assert 1 <= len(ann["summaries"]) <= 2
        texts = [*ann["captions"], ann["document"], *ann["summaries"]]
        assert all(t == t.lower() and t.strip() == t for t in texts)
        assert image.size == (48, 48) and image.mode == "RGB"


def test_invalid_difficulties_are_rejected() -> None:
    with pytest.raises(ValueError):
        Difficulty(("red", "magenta"), ("circle",), 1, 1, 0, 0, 0.0)
    with pytest.raises(ValueError):
        Difficulty(("red",), ("circle",), 1, 2, 0, 0, 0.0)
    with pytest.raises(ValueError):
        list(iter_samples(1, seed=0, difficulty="impossible"))
