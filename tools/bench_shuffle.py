"""How well the training stream mixes a class-sorted data set (issue #13): classes per batch.

Writes a synthetic image folder (``--classes`` x ``--per-class`` tiny PNGs), converts it twice with
``mmtl data convert --format imagefolder``: in input (class) order (``--no-shuffle``, what the
converter did before) and mixed across shards (the default now). Then reads the raw training stream
(no decoding) of each with the loader's old settings (one shard at a time, shuffle buffer drawn from
after 100 samples) and its current defaults (4 shards at once, buffer filled first), and prints the
mean number of distinct classes and the largest single-class share per batch over the first
``--batches`` batches, next to what a uniform random order gives. Ends with one JSON line.

    python tools/bench_shuffle.py --classes 10 --per-class 300 --batch-size 32 --batches 60
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from statistics import fmean

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmtl.components  # noqa: F401, E402  (registers the tasks the data code counts)
from data_pipelines.convert.write import ConvertOptions, convert_source  # noqa: E402
from data_pipelines.mixing import MixPlan  # noqa: E402
from data_pipelines.shards import split_shards  # noqa: E402
from data_pipelines.stream import Slot, StreamSpec, raw_groups  # noqa: E402

OLD_LOADER = {"shard_interleave": 1, "initial_fill": 100}
NEW_LOADER = {"shard_interleave": 4, "initial_fill": None}


def write_folder(root: Path, classes: int, per_class: int) -> None:
    """``root/<class>/<n>.png``: one flat colour per class (the content does not matter here)."""
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for n in range(per_class):
            Image.new("RGB", (8, 8), (c * 20 % 256, n % 256, 0)).save(folder / f"{n:05d}.png")


def batch_classes(shards: Path, spec: StreamSpec, batches: int) -> list[Counter]:
    """Class counts of each of the first ``batches`` raw batches of the training stream."""
    spec = replace(spec, shards=[split_shards(shards, "train")])
    groups = raw_groups(spec, Slot(0, 1, 0, 1))
    out = []
    for _ in range(batches):
        chunk = next(groups)
        out.append(Counter(json.loads(raw["json"])["labels"][0] for _, raw in chunk))
    return out


def summarise(counts: list[Counter], batch_size: int) -> dict[str, float]:
    return {"classes_per_batch": round(fmean(len(c) for c in counts), 2),
            "largest_class_share": round(fmean(max(c.values()) / batch_size for c in counts), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="data.shuffle_buffer (default: the config's)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard (the converter's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_folder(work / "folder", args.classes, args.per_class)
        data = {}
        for name, shuffle in (("class_order", False), ("mixed", True)):
            options = ConvertOptions(out=work / name, maxcount=args.maxcount, progress=False, shuffle=shuffle)
            convert_source("imagefolder", options, root=str(work / "folder"))
            data[name] = work / name
        spec = StreamSpec(shards=[], plan=MixPlan("natural", [], [], [1.0]), batch_size=args.batch_size,
                          shuffle_buffer=args.shuffle_buffer, seed=0)
        loaders = {"old_loader": replace(spec, **OLD_LOADER), "new_loader": replace(spec, **NEW_LOADER)}
        rows = {}
        for shards_name, shards in data.items():
            for loader_name, loader_spec in loaders.items():
                rows[f"{shards_name}+{loader_name}"] = summarise(
                    batch_classes(shards, loader_spec, args.batches), args.batch_size)
    k, b = args.classes, args.batch_size
    uniform = round(k * (1 - (1 - 1 / k) ** b), 2)
    print(f"{k} classes x {args.per_class} images, {args.maxcount} per shard, batch {b}, buffer {args.shuffle_buffer}, "
          f"first {args.batches} batches; uniform random order: {uniform} classes per batch")
    print(f"{'shards + loader':<28} {'classes/batch':>14} {'largest class share':>20}")
    for name, row in rows.items():
        print(f"{name:<28} {row['classes_per_batch']:>14} {row['largest_class_share']:>20}")
    before, after = rows["class_order+old_loader"], rows["mixed+new_loader"]
    print(json.dumps({"uniform_classes_per_batch": uniform, **{k: v for k, v in rows.items()},
                      "ratio_after_before": round(after["classes_per_batch"] / before["classes_per_batch"], 2)}))


if __name__ == "__main__":
    main()
