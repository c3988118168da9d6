"""Writing shapes world as webdataset shards plus ``dataset.json`` (``mmtl data synth``, the quickstart)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from data_pipelines.shapes_world.extra_modalities import audio_wav, depth_png
from data_pipelines.shapes_world.samples import generate_scene_sample
from data_pipelines.shapes_world.world import SOURCE, Difficulty, Scene, class_names, resolve_difficulty
from data_pipelines.shards import encode_image, write_dataset_info, write_split

Rendering = Callable[[Scene, Image.Image, int, int], bytes]  # (scene, picture, seed, index) -> encoded bytes
# modality -> (sample key, its rendering of a sample)
RENDERINGS: dict[str, tuple[str, Rendering]] = {
    "image": ("png", lambda scene, image, seed, index: encode_image(image)),
    "depth": ("depth.png", depth_png),  # the first sample key of mmtl.modalities.depth
    "audio": ("wav", audio_wav),  # the first sample key of mmtl.modalities.audio
}

# Disjoint index ranges keep the splits free of shared samples for any split size below 10**9.
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def write_shards(out_dir: str | Path, sizes: dict[str, int], seed: int = 0, difficulty: str = "medium",
                 image_size: int = 64, shard_size: int = 1000, modalities: Sequence[str] = ("image",),
                 count: bool = False) -> dict:
    """Write shapes world as webdataset shards (``{split}-NNNNNN.tar``) plus ``dataset.json``; returns the info.

    ``modalities``: which renderings of each scene a sample carries: ``image`` (png), ``depth``
    (``depth.png``), ``audio`` (``wav``). ``count``: add the ``count`` annotation (number of objects).
    """
    unknown = [m for m in modalities if m not in RENDERINGS]
    if unknown or not modalities:
        raise ValueError(f"unknown synthetic modalities {unknown}; choose from {', '.join(RENDERINGS)}")
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
    annotation, image, scene = generate_scene_sample(index, seed, level, image_size)
    sample: dict = {"__key__": f"{split}-{index:010d}"}
    for name in modalities:
        key, render_bytes = RENDERINGS[name]
        sample[key] = render_bytes(scene, image, seed, index)
    if count:
        annotation["count"] = len(scene.objects)
    sample["json"] = annotation
    return sample
