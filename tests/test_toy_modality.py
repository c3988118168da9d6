"""A new modality is one module: ``tests/toy_modality.py``, registered by importing it, is decoded and
stacked by the loader, stored by the converters and encoded and trained by the model, with no other
file naming it."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from PIL import Image

from data_pipelines.loader import Collator, SampleDecoder
from data_pipelines.modalities import store_input
from data_pipelines.sample import file_fields
from data_pipelines.shards import encode_image
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.registry import MODALITIES, MODALITY_ENCODERS
from mmtl.text import Vocabulary

MODULE = "tests.toy_modality"


@pytest.fixture
def toy() -> Iterator[Any]:
    """The toy modality's module, imported (registered) for one test and unregistered after it."""
    module = importlib.import_module(MODULE)
    try:
        yield module
    finally:
        MODALITIES.unregister(module.NAME)
        MODALITY_ENCODERS.unregister(module.ENCODER)
        sys.modules.pop(MODULE, None)


def _raw(index: int, with_toy: bool) -> dict[str, Any]:
    """A raw webdataset sample: a picture, a label and (``with_toy``) four numbers."""
    sample = {"__key__": f"s{index}", "json": json.dumps({"labels": ["a" if index % 2 else "b"]}).encode(),
              "png": encode_image(Image.new("RGB", (32, 32), (40 * index, 0, 0)))}
    if with_toy:
        sample["toy.txt"] = " ".join(str(index + k) for k in range(4)).encode()
    return sample


def test_a_modality_in_one_module_is_decoded_stacked_stored_encoded_and_trained(toy: Any, tmp_path: Path) -> None:
    config = resolve_config({}, ["model.preset=micro", "tasks=[recognition]", "model.modalities={toy: {length: 4}}"])
    parts = build_components(config, ["a", "b"], Vocabulary.from_texts(["a b"]))
    size = config.model.image.image_size
    decode = SampleDecoder(parts.tasks, parts.vocab, size, config.model.text.context_length)
    batch = Collator(parts.tasks, size)([decode(_raw(i, with_toy=i != 3)) for i in range(4)])

    carried = batch.inputs["toy"]
    assert carried.rows == 3 and carried.present.tolist() == [True, True, True, False]
    assert torch.equal(carried.data[1], torch.tensor([1.0, 2.0, 3.0, 4.0])) and not carried.data[3].any()

    model = parts.model
    encoder = model.encoders["toy"]
    assert isinstance(encoder, toy.ToyEncoder)
    # recognition reads images; the toy stands for them, beside them here since one row has no toy
    assert model.task_inputs(parts.tasks[0], batch) == ("image", "toy")
    before = [p.detach().clone() for p in encoder.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(batch)["recognition"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, encoder.parameters()))

    source = tmp_path / "numbers.txt"
    source.write_text("1 2 3 4")
    assert "toy" in file_fields() and store_input("toy", str(source)) == ("toy.txt", b"1 2 3 4")
