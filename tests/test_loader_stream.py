"""The training stream: epoch/resampled modes split over ranks and workers, exact resume, length bucketing."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import random

import pytest
import torch
import webdataset as wds

import data_pipelines.transforms as transforms_module
from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.stream import interleaved_shards, sub_seed
from data_pipelines.shards import SplitStats, iter_annotations, read_dataset_info, split_shards, write_dataset_info
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.text import Vocabulary

WORDS = "anna drew a red circle near the top of the page and bob wrote it down".split()


def write_text_shards(path: Path, count: int, shard_size: int, split: str = "train", prefix: str = "d",
                      lengths: list[int] | None = None) -> list[str]:
    """Text-only summarization samples (fast to decode); ``lengths``: words per document."""
    path.mkdir(parents=True, exist_ok=True)
    stats, keys = SplitStats(), []
    for start in range(0, count, shard_size):
        name = f"{split}-{start // shard_size:06d}.tar"
        with wds.TarWriter(str(path / name)) as sink:
            for i in range(start, min(start + shard_size, count)):
                words = (lengths[i] if lengths else 3 + i % 5)
                document = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))
                annotation = {"document": document, "summaries": [" ".join(document.split()[:2])]}
                sink.write({"__key__": f"{prefix}{i:04d}", "json": json.dumps(annotation).encode()})
                keys.append(f"{prefix}{i:04d}")
        stats.shards.append(name)
    stats.samples, stats.tasks = count, Counter({"summarization": count})
    write_dataset_info(path, "text", {split: stats}, [], {})
    return keys


@pytest.fixture(scope="module")
def parts(micro_data: Path):
    config = resolve_config({}, [f"data.path={micro_data}", "model.preset=micro"])
    info = read_dataset_info(micro_data)
    texts = [t for a in iter_annotations(micro_data, "train") for t in a["captions"] + a["summaries"] + [a["document"]]]
    texts += [" ".join(WORDS)]
    return build_components(config, info["classes"], Vocabulary.from_texts(texts))


def _loader(path: Path, parts, **kwargs):
    options = dict(image_size=32, context_length=64, batch_size=8, train=True, shuffle_buffer=16)
    return make_loader(str(path), "train", parts.tasks, parts.vocab, LoaderSettings(**{**options, **kwargs}))


def _take(loader, count: int) -> list:
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def _same(a, b) -> bool:
    """Bitwise equality of two batches: keys, pixels, text and every target tensor."""
    if a.keys != b.keys or not torch.equal(a.image, b.image) or not torch.equal(a.text, b.text):
        return False
    if a.targets.keys() != b.targets.keys():
        return False
    return all(torch.equal(a.targets[t][k], b.targets[t][k]) for t in a.targets for k in a.targets[t])


def test_default_stream_is_the_plain_seeded_webdataset_stream(micro_data: Path, parts) -> None:
    """Pins the single-source resampled stream (the quickstart's): seeded shard draws, 4 shards read at once
    (each sample from a seeded random one), a seeded buffer filled before the first draw, B at a time."""
    urls = split_shards(micro_data, "train")
    draws = (d["url"] for d in wds.ResampledShards(urls, seed=5, deterministic=True))
    mixed = interleaved_shards(draws, 4, None, random.Random(sub_seed(5, 0, 0, 4)))
    expected = iter(wds.shuffle(64, initial=64, seed=5)(mixed))
    keys = [[next(expected)["__key__"] for _ in range(16)] for _ in range(8)]
    loader = make_loader(str(micro_data), "train", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=16, train=True,
                                        shuffle_buffer=64, seed=5))
    assert [b.keys for b in _take(loader, 8)] == keys


@pytest.mark.parametrize("shards", [6, 3])  # at least one shard per rank x worker, and fewer
def test_epoch_mode_sees_every_sample_once_per_epoch_over_ranks_and_workers(tmp_path: Path, parts, shards: int) -> None:
    keys = write_text_shards(tmp_path, 60, 60 // shards)
    for epochs in (1, 2):
        seen: Counter = Counter()
        per_rank = []
        for rank in range(2):
            loader = _loader(tmp_path, parts, mode="epoch", epochs=epochs, num_workers=2, rank=rank, world_size=2)
            rank_keys = [k for batch in loader for k in batch.keys]
            per_rank.append(set(rank_keys))
            seen.update(rank_keys)
        assert seen == Counter({k: epochs for k in keys})  # exactly once per epoch, nothing missing
        if epochs == 1:
            assert not per_rank[0] & per_rank[1]  # split by rank: no sample on both
    # the shard order (and so each rank's share) changes between epochs, from seed + epoch
    first = [k for b in _loader(tmp_path, parts, mode="epoch", epochs=1, seed=0) for k in b.keys]
    second = [k for b in _loader(tmp_path, parts, mode="epoch", epochs=1, seed=1) for k in b.keys]
    assert sorted(first) == sorted(second) and first != second


def test_epoch_mode_ranks_get_disjoint_samples_within_an_epoch(tmp_path: Path, parts) -> None:
    write_text_shards(tmp_path, 48, 6)
    ranks = [{k for b in _loader(tmp_path, parts, mode="epoch", epochs=1, rank=r, world_size=2) for k in b.keys}
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 24 and not ranks[0] & ranks[1]


def test_resampled_mode_gives_each_rank_its_own_reproducible_stream(tmp_path: Path, parts) -> None:
    write_text_shards(tmp_path, 80, 10)  # 8 shards >= 2 ranks x 2 workers: disjoint shards per slot

    def keys(rank: int, world_size: int = 2, workers: int = 2) -> list[str]:
        loader = _loader(tmp_path, parts, num_workers=workers, rank=rank, world_size=world_size, seed=3)
        return [k for b in _take(loader, 6) for k in b.keys]

    rank0, rank1 = keys(0), keys(1)
    assert rank0 == keys(0)  # reproducible
    assert not set(rank0) & set(rank1)  # disjoint shard subsets
    # fewer shards than ranks x workers: streams still differ per rank (shards may repeat across ranks)
    few = tmp_path / "few"
    write_text_shards(few, 30, 10)
    streams = [[k for b in _take(_loader(few, parts, num_workers=2, rank=r, world_size=4), 4) for k in b.keys]
               for r in range(4)]
    assert len({tuple(s) for s in streams}) == 4


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_resumes_exactly_where_the_stream_was(micro_data: Path, parts, mode: str, workers: int) -> None:
    options = dict(mode=mode, num_workers=workers, seed=7, shuffle_buffer=32)
    full = _take(_loader(micro_data, parts, **options), 9)
    loader = _loader(micro_data, parts, start_batch=5, **options)
    resumed = _take(loader, 4)
    assert all(_same(a, b) for a, b in zip(full[5:], resumed))  # images, text and the random caption picks
    assert loader.position == 9  # what a later resume passes back as start_batch
    assert not _same(full[4], resumed[0])


def test_skipped_batches_are_not_decoded(micro_data: Path, parts, monkeypatch) -> None:
    decoded = []
    real = transforms_module.image_tensor
    monkeypatch.setattr(transforms_module, "image_tensor", lambda *a, **k: decoded.append(1) or real(*a, **k))
    _take(_loader(micro_data, parts, start_batch=20), 2)
    assert len(decoded) == 2 * 8  # only the two batches yielded, not the 160 samples skipped


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_cache_gives_the_same_batches_and_decodes_each_image_once(micro_data: Path, parts, monkeypatch,
                                                                         workers: int) -> None:
    options = dict(mode="resampled", num_workers=workers, seed=3)
    plain = _take(_loader(micro_data, parts, **options), 30)  # 240 samples: the 96-sample train split 2.5 times
    decoded = []
    real = transforms_module.image_tensor
    monkeypatch.setattr(transforms_module, "image_tensor", lambda *a, **k: decoded.append(1) or real(*a, **k))
    cached = _take(_loader(micro_data, parts, decoded_cache_bytes=2**20, **options), 30)
    assert all(_same(a, b) for a, b in zip(plain, cached))  # images, text and the random caption picks
    if workers == 0:  # (worker processes decode out of reach of the patch)
        assert len(decoded) == 96  # each image once, however many epochs


def test_a_set_that_does_not_fit_the_decoded_cache_is_not_cached(monkeypatch) -> None:
    fake = lambda data, size, max_pixels=0: torch.full((3, size, size), data[0], dtype=torch.uint8)  # noqa: E731
    monkeypatch.setattr(transforms_module, "image_tensor", fake)
    cache = transforms_module.DecodedImageCache(budget=2 * 3 * 32 * 32)  # two 32x32 RGB images
    blobs = [bytes([i]) * 8 for i in range(3)]
    first = [cache.image(b, 32) for b in blobs[:2]]
    assert len(cache.images) == 2 and cache.image(blobs[0], 32) is first[0]  # a hit: the same tensor
    assert int(cache.image(blobs[2], 32)[0, 0, 0]) == 2  # past the budget: still decoded right...
    assert cache.images == {} and not cache.budget.on  # ...and the cache is emptied and off
    assert cache.image(blobs[0], 32) is not first[0]


def _padding(batches) -> tuple[int, list[str]]:
    pads = sum(int((b.text == 0).sum()) for b in batches)
    return pads, [k for b in batches for k in b.keys]


def test_length_buckets_cut_padding_and_keep_every_sample(tmp_path: Path, parts) -> None:
    lengths = [2 + (i * 37) % 40 for i in range(96)]  # 2..41 words, mixed
    keys = write_text_shards(tmp_path, 96, 24, lengths=lengths)
    plain_pad, plain_keys = _padding(list(_loader(tmp_path, parts, mode="epoch", epochs=1)))
    bucket_pad, bucket_keys = _padding(list(_loader(tmp_path, parts, mode="epoch", epochs=1, length_buckets=4)))
    assert sorted(plain_keys) == sorted(bucket_keys) == sorted(keys)  # nothing dropped or repeated
    assert bucket_pad < 0.5 * plain_pad
    # resuming works with buckets too: they are formed before decoding
    options = dict(mode="resampled", length_buckets=4, seed=2)
    full = _take(_loader(tmp_path, parts, **options), 6)
    assert all(_same(a, b) for a, b in zip(full[3:], _take(_loader(tmp_path, parts, start_batch=3, **options), 3)))


def test_eval_honours_max_corrupt_fraction(tmp_path: Path, parts, capsys) -> None:
    import yaml

    from mmtl.checkpoint import save_pretrained
    from mmtl.cli import main

    data, checkpoint = tmp_path / "data", tmp_path / "model"
    for split in ("train", "test"):
        write_text_shards(data, 120, 60, split=split)
    for shard in ("test-000001.tar",):  # three malformed json in the second test shard
        path = data / shard
        samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
        with wds.TarWriter(str(path)) as sink:
            for i, sample in enumerate(samples):
                body = b"[broken" if i in (5, 10, 15) else sample["json"]
                sink.write({"__key__": sample["__key__"], "json": body})
    save_pretrained(parts, checkpoint)
    settings = yaml.safe_load((checkpoint / "config.yaml").read_text())
    settings["eval"]["generation"]["max_length"] = 4
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(settings))
    command = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "test"]
    assert main(command) == 2  # default data.max_corrupt_fraction = 1%: 3 of 120 is too many
    assert "max_corrupt_fraction=0.01; worst shard: test-000001.tar" in capsys.readouterr().err
    settings["data"]["max_corrupt_fraction"] = 0.05  # a checkpoint's data settings are data: not used
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(settings))
    assert main(command) == 2
    capsys.readouterr()
    assert main([*command, "data.max_corrupt_fraction=0.05"]) == 0  # your own data settings decide
    assert "117 samples of split 'test'" in capsys.readouterr().out


def test_a_stream_whose_shards_cannot_be_read_stops_with_the_reason(tmp_path: Path, parts, refuse_tar_reads) -> None:
    """Resampling draws shards for ever: when none can be opened the stream must fail, naming a shard
    and why, instead of drawing unreadable shards without end."""
    from mmtl.errors import MMTLError

    write_text_shards(tmp_path, 12, 4)
    refuse_tar_reads()
    loader = _loader(tmp_path, parts, mode="resampled")
    with pytest.raises(MMTLError, match=r"train-00000\d\.tar: permission denied"):
        next(iter(loader))
