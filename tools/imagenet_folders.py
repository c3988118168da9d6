"""Turn ../shared/data/imagenet_sample (one JPEG per ImageNet class) into a small single-label set.

Usage: python tools/imagenet_folders.py OUT [--source DIR] [--test-every 5] [--convert] [--resize-max 96]

imagenet_sample holds one image per class, so no class can be held out as it is. This groups the
1,000 classes into coarse super-classes by their ImageNet index (the sorted WordNet ids follow the
hierarchy: fish, birds, reptiles, ..., dogs, ..., artefacts, food), and writes the imagefolder
layout ``OUT/{train,test}/<super-class>/<file>`` as symlinks, every ``--test-every``-th image of a
super-class going to ``test``. Artefacts (indices 398-923) are half the set, so only every fifth
of them is kept, which keeps the classes within a factor of ~7 of each other.
With ``--convert`` it also runs ``mmtl data convert --format imagefolder`` for both splits into
``OUT/shards`` (the directory to pass to ``tools/bench_recipe.py --data``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# super-class -> ImageNet class index ranges (inclusive), from the WordNet hierarchy
SUPER_CLASSES: dict[str, list[tuple[int, int]]] = {
    "fish": [(0, 6), (389, 397)],
    "bird": [(7, 24), (80, 100), (127, 146)],
    "reptile_amphibian": [(25, 68)],
    "invertebrate": [(69, 79), (107, 126), (300, 329)],
    "dog": [(151, 268)],
    "wild_carnivore": [(269, 299)],
    "other_mammal": [(101, 106), (147, 150), (330, 388)],
    "artefact": [(398, 923)],
    "food": [(924, 969)],
}
SUBSAMPLE = {"artefact": 5}  # keep every n-th image of these super-classes


def super_class_of(index: int) -> str | None:
    """The super-class of ImageNet class ``index``; None for the classes left out (nature scenes, ...)."""
    for name, ranges in SUPER_CLASSES.items():
        if any(low <= index <= high for low, high in ranges):
            return name
    return None


def write_folders(source: Path, out: Path, test_every: int) -> dict[str, dict[str, int]]:
    """Symlink each kept image into ``out/<split>/<super-class>/``; images per split and super-class."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    if len(files) != 1000:
        raise SystemExit(f"expected the 1,000 images of imagenet_sample in {source}, found {len(files)}")
    seen: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for index, path in enumerate(files):
        name = super_class_of(index)
        if name is None:
            continue
        seen[name] = seen.get(name, 0) + 1
        kept = seen[name] // SUBSAMPLE.get(name, 1)
        if seen[name] % SUBSAMPLE.get(name, 1):
            continue
        split = "test" if kept % test_every == 0 else "train"
        target = out / split / name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(path.resolve(), target)
        counts[split][name] = counts[split].get(name, 0) + 1
    return counts


def convert(out: Path, resize_max: int) -> Path:
    """``mmtl data convert --format imagefolder`` of both splits into ``out/shards``."""
    shards = out / "shards"
    for split in ("train", "test"):
        subprocess.run([sys.executable, "-m", "mmtl", "data", "convert", "--format", "imagefolder",
                        "--root", str(out / split), "--out", str(shards), "--split", split, "--name",
                        "imagenet_super", "--resize-max", str(resize_max), "--no-progress", "--overwrite"],
                       check=True, cwd=REPO)
    return shards


def main(argv: list[str] | None = None) -> int:
    """Write the folders (and the shards with ``--convert``); prints the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "imagenet_sample"))
    parser.add_argument("--test-every", type=int, default=5, help="every n-th image of a super-class is held out")
    parser.add_argument("--convert", action="store_true", help="also write shards into OUT/shards")
    parser.add_argument("--resize-max", type=int, default=96, help="--resize-max of the conversion")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.is_dir():
        print(f"imagenet_folders: error: no imagenet_sample at {source}", file=sys.stderr)
        return 2
    counts = write_folders(source, Path(args.out), max(2, args.test_every))
    for split, per_class in counts.items():
        listed = ", ".join(f"{name} {count}" for name, count in sorted(per_class.items()))
        print(f"{split}: {sum(per_class.values())} images; {listed}")
    if args.convert:
        print("shards:", convert(Path(args.out), args.resize_max))
    return 0


if __name__ == "__main__":
    sys.exit(main())
