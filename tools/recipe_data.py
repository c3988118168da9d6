"""The data sets bench_recipe trains on: the quickstart's shapes world, the real sets of ``../shared/data``
(converted once into a cache) and a user's own shard folder (``--data``), checked before any training."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.shapes_world import write_shards
from mmtl.config import load_config
from mmtl.errors import MMTLError

ALL_TASKS = ("recognition", "captioning", "summarization")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DataSet:
    """A shard directory to benchmark on, the tasks it supervises and its held-out split."""

    name: str
    path: Path
    tasks: list[str]
    eval_split: str = "test"


def shared_data_dir() -> Path:
    """$MMTL_SHARED_DATA, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("MMTL_SHARED_DATA") or REPO.parent / "shared" / "data")


def real_conversions(shared: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per real data set: its tasks and the ``mmtl data convert`` arguments of its train and test splits."""
    coco, tldr, dsum = shared / "coco_mini", shared / "scitldr", shared / "dialogsum"

    def coco_split(year_split: str, split: str) -> list[str]:
        return ["--format", "coco", "--images", str(coco / year_split),
                "--captions", str(coco / "annotations" / f"captions_{year_split}.json"),
                "--instances", str(coco / "annotations" / f"instances_{year_split}.json"),
                "--split", split, "--resize-max", "256"]

    return {
        "coco_mini": (["recognition", "captioning"], [coco_split("train2017", "train"), coco_split("val2017", "test")]),
        "scitldr": (["summarization"], [
            ["--format", "jsonl", "--input", str(tldr / f"{part}.jsonl"), "--map", "document=source",
             "--map", "summaries=target", "--split", part] for part in ("train", "test")]),
        "dialogsum": (["summarization"], [
            ["--format", "jsonl", "--input", str(dsum / "dialogsum.dev.jsonl"), "--map", "document=dialogue",
             "--map", "summaries=summary", "--split", "train"],
            ["--format", "jsonl", "--input", str(dsum / "dialogsum.test.jsonl"), "--map", "document=dialogue",
             "--map", "summaries=summary1,summary2,summary3", "--split", "test"]]),
    }


def convert_real(shared: Path, cache: Path, tasks: list[str]) -> list[DataSet]:
    """Convert each real set that is present (once: a converted split in ``cache`` is reused)."""
    sets = []
    if (shared / "imagenet_sample").is_dir():
        print("skipping imagenet_sample: one image per class, so no class has a held-out image to score "
              "(tools/imagenet_folders.py OUT --convert groups it into 9 super-classes: pass OUT/shards to --data)")
    for name, (set_tasks, conversions) in real_conversions(shared).items():
        wanted = [t for t in set_tasks if t in tasks]
        inputs = [Path(a[a.index(flag) + 1]) for a in conversions for flag in ("--input", "--images") if flag in a]
        if not wanted or not all(p.exists() for p in inputs):
            print(f"skipping {name}: {'not in --tasks' if not wanted else 'absent from ' + str(shared)}")
            continue
        out = cache / name
        info_path = out / "dataset.json"
        for args in conversions:
            split = args[args.index("--split") + 1]
            if info_path.exists() and split in json.loads(info_path.read_text()).get("splits", {}):
                continue
            command = [sys.executable, "-m", "mmtl", "data", "convert", *args, "--out", str(out),
                       "--name", name, "--no-progress", "--overwrite"]
            print("converting:", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        sets.append(DataSet(name, out, wanted))
    return sets


def dataset_tasks(path: Path, tasks: list[str]) -> list[str]:
    """The requested tasks that the train split of ``path`` supervises (dataset.json's counts)."""
    info = json.loads((path / "dataset.json").read_text())
    counts = info["splits"].get("train", {}).get("tasks")
    return [t for t in tasks if counts is None or counts.get(t, 0) > 0]


def user_dataset(args: argparse.Namespace) -> DataSet:
    """``--data``, checked: a shard directory with the train and eval splits that supervises the tasks asked for."""
    path = Path(args.data)
    if not path.is_dir():
        raise MMTLError(f"--data {path}: no such directory")
    if not (path / "dataset.json").is_file():
        raise MMTLError(f"--data {path}: no dataset.json there (write one with `mmtl data convert`)")
    try:
        splits = json.loads((path / "dataset.json").read_text())["splits"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MMTLError(f"--data {path}: dataset.json has no readable 'splits' ({exc})") from None
    for split, flag in (("train", "its training split"), (args.eval_split, "--eval-split")):
        if split not in splits:
            raise MMTLError(f"--data {path}: no split {split!r} ({flag}); it has {', '.join(splits) or 'none'}")
    tasks = dataset_tasks(path, args.tasks)
    missing = [t for t in args.tasks if t not in tasks]
    if args.explicit_tasks and missing:
        carried = dataset_tasks(path, list(ALL_TASKS))
        raise MMTLError(f"--tasks {','.join(missing)}: the train split of {path} supervises "
                        f"{', '.join(carried) or 'none of ' + ', '.join(ALL_TASKS)}")
    return DataSet(path.name, path, tasks, args.eval_split)


def select_datasets(args: argparse.Namespace) -> list[DataSet]:
    """The data sets the options ask for."""
    cache = Path(args.cache)
    if args.real:
        shared = shared_data_dir()
        if not shared.is_dir():
            raise MMTLError(f"--real: no shared data at {shared} (set MMTL_SHARED_DATA)")
        return convert_real(shared, cache, args.tasks)
    if args.data:
        return [user_dataset(args)]
    path = cache / "shapes"
    if not (path / "dataset.json").exists():  # the quickstart's data set
        synth = load_config(None, []).data.synthetic
        write_shards(path, {"train": synth.train, "val": synth.val, "test": synth.test}, seed=synth.seed,
                     difficulty=synth.difficulty, image_size=synth.image_size, shard_size=synth.shard_size)
    return [DataSet("shapes", path, list(args.tasks))]
