"""Corrupt samples in the loader: skipped, counted per reason (also across workers), and a stop past the limit."""
import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.shards import SplitStats, iter_annotations, read_dataset_info, write_dataset_info
from data_pipelines.shapes_world import class_names, generate_sample, resolve_difficulty
from mmtl.builder import build_components
from mmtl.cli import main
from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.text import Vocabulary
from tests.conftest import micro_overrides

# pixel limit used with these shards: the 32x32 good images pass, the 120x120 "bomb" does not
TEST_MAX_PIXELS = 10_000
CORRUPT_KEYS = {
    "bad-undecodable": "undecodable_image", "bad-truncated": "truncated_image", "bad-bomb": "decompression_bomb",
    "bad-nojson": "missing_json", "bad-malformed": "malformed_json", "bad-emptytext": "empty_text",
}


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_shards(path: Path, split: str, samples: list[dict], shard_size: int, classes: list[str]) -> None:
    """Write raw samples (bytes values, json included) as they are, so broken json survives."""
    path.mkdir(parents=True, exist_ok=True)
    stats = SplitStats()
    for start in range(0, len(samples), shard_size):
        name = f"{split}-{start // shard_size:06d}.tar"
        with wds.TarWriter(str(path / name)) as sink:
            for sample in samples[start:start + shard_size]:
                sink.write(sample)
        stats.shards.append(name)
    stats.samples = len(samples)
    write_dataset_info(path, "corrupt", {split: stats}, classes, {})


def write_corrupt_shards(path: Path, good: int = 6, shard_size: int = 6) -> list[str]:
    """Good shapes-world samples with one sample of each corrupt kind between them; returns the good keys."""
    level = resolve_difficulty("easy")
    goods = []
    for i in range(good):
        annotation, image = generate_sample(i, 0, level, 32)
        goods.append({"__key__": f"good-{i}", "png": _encode(image, "PNG"), "json": json.dumps(annotation).encode()})
    annotation = goods[0]["json"]
    photo = _encode(Image.new("RGB", (32, 32), (200, 30, 30)), "JPEG")
    bad = [
        {"__key__": "bad-undecodable", "jpg": b"this is not an image", "json": annotation},
        {"__key__": "bad-truncated", "jpg": photo[: len(photo) // 2], "json": annotation},
        {"__key__": "bad-bomb", "png": _encode(Image.new("L", (120, 120)), "PNG"), "json": annotation},
        {"__key__": "bad-nojson", "png": goods[0]["png"]},
        {"__key__": "bad-malformed", "png": goods[0]["png"], "json": b"{not json"},
        {"__key__": "bad-emptytext", "png": goods[0]["png"],
         "json": json.dumps({**json.loads(annotation), "captions": ["  ", ""]}).encode()},
    ]
    mixed = [s for pair in zip(goods, bad) for s in pair] + goods[len(bad):] + bad[len(goods):]
    write_shards(path, "train", mixed, shard_size, class_names(level))
    return [g["__key__"] for g in goods]


def _components(micro_data: Path):
    config = resolve_config({}, [f"data.path={micro_data}", "model.preset=micro"])
    info = read_dataset_info(micro_data)
    texts = [t for a in iter_annotations(micro_data, "train") for t in a["captions"] + a["summaries"] + [a["document"]]]
    return build_components(config, info["classes"], Vocabulary.from_texts(texts))


def _loader(path: Path, parts, workers: int = 0, fraction: float | None = None, batch_size: int = 4):
    return make_loader(str(path), "train", parts.tasks, parts.vocab,
                       LoaderSettings(image_size=32, context_length=64, batch_size=batch_size, train=False,
                                      num_workers=workers, max_corrupt_fraction=fraction, max_image_pixels=TEST_MAX_PIXELS))


@pytest.mark.parametrize("workers", [0, 2])
def test_each_corrupt_kind_is_skipped_and_counted(micro_data: Path, tmp_path: Path, workers: int, caplog) -> None:
    good_keys = write_corrupt_shards(tmp_path)
    parts = _components(micro_data)
    loader = _loader(tmp_path, parts, workers=workers)
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(good_keys)  # every good sample intact, no bad one
    for batch in batches:  # the good samples still carry their images and targets
        assert batch.has_image.all() and batch.image.flatten(1).float().std(1).gt(0).all()
        assert len(batch.targets["recognition"]["index"]) == len(batch)
    expected = {reason: 1 for reason in CORRUPT_KEYS.values()}
    per_batch = {}
    for batch in batches:
        for reason, count in batch.skipped.items():
            per_batch[reason] = per_batch.get(reason, 0) + count
    assert per_batch == expected  # the counts travel with the batches, also out of worker processes
    assert dict(loader.corrupt.reasons) == expected
    assert loader.corrupt.seen == len(good_keys) + len(CORRUPT_KEYS)
    assert loader.corrupt.log_record()["data/skipped"] == len(CORRUPT_KEYS)
    if workers == 0:  # worker processes log in their own process
        for key, reason in CORRUPT_KEYS.items():
            assert f"skipping corrupt sample {key} ({reason}" in caplog.text


def test_too_many_corrupt_samples_stop_with_the_worst_shard(micro_data: Path, tmp_path: Path) -> None:
    level = resolve_difficulty("easy")
    annotation = json.dumps(generate_sample(0, 0, level, 32)[0]).encode()
    text_only = json.dumps({"document": "anna drew a red circle .", "summaries": ["anna drew a red circle"]}).encode()
    samples = [{"__key__": f"t{i:03d}", "json": text_only} for i in range(120)]
    for i in (70, 75, 80):  # all three corrupt samples sit in the second shard (samples 60..119)
        samples[i] = {"__key__": f"t{i:03d}", "json": b"[broken"}
    write_shards(tmp_path, "train", samples, 60, class_names(level))
    parts = _components(micro_data)
    assert annotation  # the data set is text-only; the vocabulary comes from the micro data
    with pytest.raises(MMTLError, match=r"3 of 1\d\d samples were corrupt \(malformed_json=3\).*train-000001\.tar"):
        list(_loader(tmp_path, parts, fraction=0.01, batch_size=10))
    # the same data under a looser limit loads completely
    loader = _loader(tmp_path, parts, fraction=0.05, batch_size=10)
    assert sum(len(b) for b in loader) == 117 and loader.corrupt.skipped == 3


def test_training_logs_skipped_samples(micro_data: Path, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    write_corrupt_shards(data, good=10, shard_size=16)
    overrides = micro_overrides(data, run, steps=1) + [f"data.max_image_pixels={TEST_MAX_PIXELS}"]
    assert main(["train", *overrides]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    last = records[-1]
    # 8 good samples drawn (shuffled) from passes over a shard that is 6/16 corrupt: some were skipped
    assert last["data/skipped"] >= 1
    per_reason = {k: v for k, v in last.items() if k.startswith("data/skipped/")}
    assert sum(per_reason.values()) == last["data/skipped"]
    assert {k.rsplit("/", 1)[1] for k in per_reason} <= set(CORRUPT_KEYS.values())
