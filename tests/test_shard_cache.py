"""The in-memory shard cache (data.shard_cache_mb): later epochs skip the tar files, nothing else changes.

Batches, the resume position, corrupt-sample counts and unreadable-shard handling must be exactly what
they are without the cache; a shard that fails part way is never held, and a set that does not fit is
not held at all.
"""
from __future__ import annotations

import builtins
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from data_pipelines.cachebudget import CacheBudget
from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.shardcache import ShardCache
from data_pipelines.shards import split_shards
from data_pipelines.shardsets import contract_samples
from tests.test_loader_corrupt import CORRUPT_KEYS, TEST_MAX_PIXELS, write_corrupt_shards
from tests.test_loader_stream import _loader, _same, _take, parts, write_text_shards  # noqa: F401  (parts: a fixture)

CACHE = 2**20  # bytes: holds every test set here


@pytest.fixture
def tar_opens(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the opens of each ``.tar`` file from here on (in this process)."""
    opens: Counter = Counter()
    real_open = builtins.open

    def counting(file, *args, **kwargs):
        if str(file).endswith(".tar"):
            opens[Path(str(file)).name] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return opens


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_cache_gives_the_same_batches_over_several_epochs(micro_data: Path, parts, mode: str,
                                                              workers: int) -> None:
    options = dict(mode=mode, num_workers=workers, seed=4)
    plain = _take(_loader(micro_data, parts, **options), 40)  # 320 samples: the 96-sample split 3.3 times
    cached = _take(_loader(micro_data, parts, shard_cache_bytes=CACHE, **options), 40)
    assert all(_same(a, b) for a, b in zip(plain, cached, strict=True))


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
def test_each_shard_is_read_from_disk_once(micro_data: Path, parts, mode: str, tar_opens: Counter) -> None:
    _take(_loader(micro_data, parts, mode=mode, seed=4, shard_cache_bytes=CACHE), 40)
    names = [Path(u).name for u in split_shards(micro_data, "train")]
    assert tar_opens == Counter({name: 1 for name in names})
    tar_opens.clear()
    _take(_loader(micro_data, parts, mode=mode, seed=4), 40)  # without the cache: every epoch reads them again
    assert sum(tar_opens.values()) > len(names)


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_mid_epoch_with_the_cache_continues_the_same_stream(micro_data: Path, parts, mode: str,
                                                                     workers: int) -> None:
    options = dict(mode=mode, num_workers=workers, seed=7, shuffle_buffer=32)
    full = _take(_loader(micro_data, parts, **options), 30)  # no cache
    loader = _loader(micro_data, parts, start_batch=17, shard_cache_bytes=CACHE, **options)  # in epoch 2
    resumed = _take(loader, 13)
    assert all(_same(a, b) for a, b in zip(full[17:], resumed, strict=True))
    assert loader.position == 30


def _corrupt_loader(path: Path, parts, cache: int, workers: int = 0):
    settings = LoaderSettings(image_size=32, context_length=64, batch_size=4, train=True, mode="epoch", epochs=3,
                              num_workers=workers, max_corrupt_fraction=None, max_image_pixels=TEST_MAX_PIXELS,
                              shuffle_buffer=8, shard_cache_bytes=cache)
    return make_loader(str(path), "train", parts.tasks, parts.vocab, settings)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted_in_every_epoch(micro_data: Path, tmp_path: Path, parts,
                                                                workers: int) -> None:
    good = write_corrupt_shards(tmp_path)
    plain, cached = _corrupt_loader(tmp_path, parts, 0, workers), _corrupt_loader(tmp_path, parts, CACHE, workers)
    plain_batches, cached_batches = list(plain), list(cached)
    assert all(_same(a, b) and a.skipped == b.skipped for a, b in zip(plain_batches, cached_batches, strict=True))
    assert Counter(k for b in cached_batches for k in b.keys) == Counter({k: 3 for k in good})
    assert dict(cached.corrupt.reasons) == dict(plain.corrupt.reasons) == {r: 3 for r in CORRUPT_KEYS.values()}
    assert cached.corrupt.seen == plain.corrupt.seen == 3 * (len(good) + len(CORRUPT_KEYS))


def _truncated_shard(tmp_path: Path) -> tuple[str, list[str]]:
    """A tar of 12 text samples cut off in the middle of its 8th: the keys a reader gets before the cut."""
    keys = write_text_shards(tmp_path, 12, 12)
    url = str(tmp_path / "train-000000.tar")
    with tarfile.open(url) as tar:
        cut = next(m for m in tar.getmembers() if m.name.startswith(keys[7])).offset_data + 3
    with open(url, "r+b") as file:
        file.truncate(cut)
    return url, keys[:7]


def test_a_shard_that_fails_mid_read_is_not_held(tmp_path: Path) -> None:
    url, readable = _truncated_shard(tmp_path)
    plain: list[BaseException] = []
    assert [s["__key__"] for s in contract_samples([url], None, lambda e: plain.append(e) or True)] == readable
    errors: list[BaseException] = []
    cache = ShardCache(CACHE)
    for _ in range(2):  # each pass reads it from the disk and reports its errors, as without the cache
        assert [s["__key__"] for s in cache.samples(url, None, lambda e: errors.append(e) or True)] == readable
    assert plain and [str(e) for e in errors] == 2 * [str(e) for e in plain]
    assert url not in cache.shards and cache.budget.used == 0


def test_a_failing_shard_read_through_a_raising_handler_leaves_nothing_held(tmp_path: Path) -> None:
    url, readable = _truncated_shard(tmp_path)

    def refuse(error: BaseException) -> bool:
        raise RuntimeError("stop") from error

    def keys(samples) -> list[str]:
        seen = []
        with pytest.raises(RuntimeError, match="stop"):
            for sample in samples:
                seen.append(sample["__key__"])
        return seen

    cache = ShardCache(CACHE)
    plain = keys(contract_samples([url], None, refuse))
    assert keys(cache.samples(url, None, refuse)) == plain == readable[:len(plain)] and plain
    assert cache.shards == {} and cache.budget.used == 0


def test_a_good_shard_is_held_once_read_and_served_as_copies(micro_data: Path) -> None:
    url = split_shards(micro_data, "train")[0]
    cache = ShardCache(CACHE)
    first = list(cache.samples(url, None, wds.reraise_exception))
    assert list(cache.shards) == [url] and cache.budget.used == Path(url).stat().st_size
    again = list(cache.samples(url, None, wds.reraise_exception))
    assert again == first and all(a is not b for a, b in zip(first, again))  # a consumer cannot alter the cache


def test_a_set_that_does_not_fit_is_not_held(micro_data: Path, parts) -> None:
    urls = split_shards(micro_data, "train")
    sizes = sorted(Path(u).stat().st_size for u in urls)
    cache = ShardCache(sizes[-1] + sizes[0] - 1)  # one shard fits, never all of them
    for url in urls:
        list(cache.samples(url, None, wds.reraise_exception))
    assert cache.shards == {} and cache.budget.used == 0 and not cache.budget.on  # held nothing, and is off
    options = dict(mode="epoch", seed=2)
    plain = _take(_loader(micro_data, parts, **options), 30)
    assert all(_same(a, b) for a, b in zip(plain, _take(_loader(micro_data, parts, shard_cache_bytes=sizes[-1],
                                                                 **options), 30), strict=True))


def test_the_budget_turns_off_for_good_at_the_first_claim_past_it() -> None:
    budget = CacheBudget(10)
    assert budget.on and budget.claim(6) and budget.used == 6
    budget.release(6)
    assert budget.claim(10) and not budget.claim(1)
    assert not budget.on and budget.used == 0 and not budget.claim(1)
    assert not CacheBudget(0).on and not CacheBudget(0).claim(0)


def test_the_shard_cache_counts_in_the_memory_budget() -> None:
    from mmtl.config import load_config
    from mmtl.config.budget import costs

    config = load_config(None, ["model.preset=tiny", "data.shard_cache_mb=64"])
    item = next(item for item in costs(config, 10, 49408, 32, training=True) if item.field.startswith("data.shard"))
    assert item.bytes == 64 * 2**20
    assert not any(i.field.startswith("data.shard") and i.bytes for i in costs(config, 10, 49408, 32, training=False))
    assert LoaderSettings.for_training(config).shard_cache_bytes == 64 * 2**20


def test_the_collator_pads_text_and_zero_fills_rows_without_an_image() -> None:
    """Stacking in one copy (not row by row) keeps the batch: uint8 images, zeros where a row has none,
    PAD after each document."""
    import torch

    from data_pipelines.loader import Collator, Example
    from mmtl.text import PAD

    pixels = [torch.full((3, 4, 4), 10 * i + 1, dtype=torch.uint8) for i in range(3)]
    examples = [Example("a", pixels[0], [5, 6, 7], {}, {}), Example("b", None, [], {}, {}),
                Example("c", pixels[2], [8], {}, {})]
    batch = Collator([], 4, modalities={})(examples)
    assert batch.image.dtype == torch.uint8 and batch.has_image.tolist() == [True, False, True]
    assert torch.equal(batch.image, torch.stack([pixels[0], torch.zeros(3, 4, 4, dtype=torch.uint8), pixels[2]]))
    assert batch.text.tolist() == [[5, 6, 7], [PAD] * 3, [8, PAD, PAD]] and batch.text.dtype == torch.long
    full = Collator([], 4, modalities={})([examples[0], examples[2]])
    assert torch.equal(full.image, torch.stack([pixels[0], pixels[2]])) and full.has_image.all()
    empty = Collator([], 4, modalities={})([Example("d", None, [], {}, {})])
    assert empty.text.tolist() == [[PAD]] and not empty.has_image.any() and empty.image.shape == (1, 3, 4, 4)


def test_a_shard_whose_mapped_samples_outgrow_its_file_is_measured_before_it_is_held(tmp_path: Path) -> None:
    """A field mapping may copy a member into the json (captions=txt): the samples held are then larger
    than the tar, and the cache counts what it would hold, not only the file."""
    from data_pipelines.shards import as_mapping

    url = str(tmp_path / "big.tar")
    with wds.TarWriter(url) as sink:
        for i in range(2):
            sink.write({"__key__": f"k{i}", "txt": ("a caption " * 5000).encode(), "json": b"{}"})
    mapping, size = as_mapping(["captions=txt"]), Path(url).stat().st_size
    plain = list(contract_samples([url], mapping, wds.reraise_exception))
    assert len(plain[0]["json"]) > 40_000  # the caption is in the json too
    cache = ShardCache(size + 1000)  # the file fits, the mapped samples do not
    assert list(cache.samples(url, mapping, wds.reraise_exception)) == plain  # still read right, once
    assert cache.shards == {} and not cache.budget.on
    roomy = ShardCache(10 * size)
    assert list(roomy.samples(url, mapping, wds.reraise_exception)) == plain and url in roomy.shards
    assert roomy.budget.used > size
