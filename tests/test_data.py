import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.shards import iter_annotations, read_dataset_info, split_shards, write_dataset_info, write_split
from data_pipelines.shapes_world import generate_sample, resolve_difficulty
from data_pipelines.transforms import image_tensor
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.errors import MMTLError
from mmtl.text import Vocabulary
from tests.conftest import MICRO_SIZES


def _parts(data: Path):
    config = resolve_config({}, [f"data.path={data}", "model.preset=micro"])
    info = read_dataset_info(data)
    texts = [t for a in iter_annotations(data, "train") for t in a["captions"] + a["summaries"] + [a["document"]]]
    return config, build_components(config, info["classes"], Vocabulary.from_texts(texts))


def test_dataset_info_counts_every_task_and_split(micro_data: Path) -> None:
    info = read_dataset_info(micro_data)
    for split, size in MICRO_SIZES.items():
        assert info["splits"][split]["samples"] == size
        assert info["splits"][split]["tasks"] == {"recognition": size, "captioning": size, "summarization": size}
    assert len(split_shards(micro_data, "train")) == 3  # 96 samples, 40 per shard
    assert info["classes"] == sorted(info["classes"]) and "red circle" in info["classes"]


def test_shard_round_trip_preserves_annotations_and_pixels(micro_data: Path) -> None:
    annotations = list(iter_annotations(micro_data, "test"))
    assert len(annotations) == MICRO_SIZES["test"]
    config, parts = _parts(micro_data)
    loader = make_loader(str(micro_data), "test", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=16, train=False))
    (batch,) = list(loader)
    assert batch.image.dtype == torch.uint8 and batch.image.shape == (16, 3, 32, 32)
    assert batch.annotations == annotations
    # the first test sample regenerates to the very same pixels
    annotation, image = generate_sample(2_000_000_000, 1, resolve_difficulty("easy"), 32)
    assert annotation == annotations[0]
    assert torch.equal(batch.image[0], image_tensor(_png(image), 32))
    labels = batch.targets["recognition"]["labels"]
    assert labels.sum(1).tolist() == [len(a["labels"]) for a in annotations]
    assert batch.targets["captioning"]["tokens"][:, 0].eq(1).all()  # BOS first


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_sample_is_skipped_and_counted(micro_data: Path, tmp_path: Path, caplog) -> None:
    good = list(iter_annotations(micro_data, "val"))[:3]
    samples = [{"__key__": f"s{i}", "png": _png(generate_sample(i, 0, resolve_difficulty("easy"), 32)[1]), "json": a}
               for i, a in enumerate(good)]
    samples[1]["png"] = b"not an image at all"
    stats = write_split(tmp_path, "val", samples)
    write_dataset_info(tmp_path, "t", {"val": stats}, None, {})
    config, parts = _parts(micro_data)
    loader = make_loader(str(tmp_path), "val", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=8, train=False))
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == ["s0", "s2"]
    assert "skipping corrupt sample s1" in caplog.text


def test_training_loader_streams_forever_and_shuffles(micro_data: Path) -> None:
    config, parts = _parts(micro_data)
    loader = make_loader(str(micro_data), "train", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=32, train=True,
                                        shuffle_buffer=64))
    it = iter(loader)
    keys = [k for _ in range(5) for k in next(it).keys]  # 160 samples > 96 in the split
    assert len(keys) == 160
    assert keys[:32] != sorted(keys[:32])


def test_missing_data_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MMTLError, match="mmtl data synth"):
        read_dataset_info(tmp_path)
    with pytest.raises(MMTLError, match="split 'nope'"):
        (tmp_path / "dataset.json").write_text(json.dumps({"splits": {}}))
        split_shards(tmp_path, "nope")


def test_training_stream_is_reproducible_from_its_seed(micro_data: Path) -> None:
    config, parts = _parts(micro_data)

    def keys(seed: int) -> list[str]:
        loader = make_loader(str(micro_data), "train", parts.tasks, parts.vocab,
                             LoaderSettings(image_size=32, context_length=64, batch_size=16, train=True,
                                            shuffle_buffer=64, seed=seed))
        it = iter(loader)
        return [k for _ in range(4) for k in next(it).keys]

    assert keys(3) == keys(3)
    assert keys(3) != keys(4)
