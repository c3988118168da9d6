"""The data profile: building a model reads each training source's dataset.json and annotations once, and
gives the same vocabulary, classes and warnings as reading them separately."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import data_pipelines.profile as profile_module
import data_pipelines.shards as shards_module
from data_pipelines.sample import annotation_texts
from data_pipelines.shards import iter_annotations, read_dataset_info
from mmtl.builder import components_from_data, long_document_report
from mmtl.config import load_config
from mmtl.text import Vocabulary


def test_the_profile_reads_each_source_once_and_matches_a_separate_scan(micro_data: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, [f"data.path={micro_data}", "model.preset=micro",
                                "tasks=[recognition,captioning,summarization]"])
    expected = Vocabulary.from_texts(t for a in iter_annotations(micro_data, "train") for t in annotation_texts(a))
    passes: Counter = Counter()
    infos: Counter = Counter()

    def counted_annotations(path, split, *args, **kwargs):
        passes[(str(path), split)] += 1
        return iter_annotations(path, split, *args, **kwargs)

    def counted_info(path, *args, **kwargs):
        infos[str(path)] += 1
        return read_dataset_info(path, *args, **kwargs)

    monkeypatch.setattr(profile_module, "iter_annotations", counted_annotations)
    monkeypatch.setattr(profile_module, "read_dataset_info", counted_info)
    components = components_from_data(config)
    assert passes == {(str(micro_data), "train"): 1}  # vocabulary and document lengths from one pass
    assert infos == {str(micro_data): 1}  # classes, label mode and task counts from one read
    assert components.vocab.bpe_ids == expected.bpe_ids
    assert components.classes == shards_module.read_dataset_info(micro_data)["classes"]


def test_the_texts_of_shards_without_dataset_json_are_cached_beside_their_scan(micro_data: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for tar in sorted(micro_data.glob("train-*.tar")):
        (plain / tar.name).write_bytes(tar.read_bytes())
    config = load_config(None, [f"data.path={plain}", "model.preset=micro", "tasks=[captioning,summarization]",
                                "model.text.context_length=8"])
    expected = Vocabulary.from_texts(t for a in iter_annotations(plain, "train") for t in annotation_texts(a))
    first = components_from_data(config)
    assert first.vocab.bpe_ids == expected.bpe_ids
    assert len(list(plain.glob(".mmtl-texts-*.json"))) == 1 and len(list(plain.glob(".mmtl-scan-*.json"))) == 1
    warning = long_document_report(config)

    def no_pass(*args, **kwargs):
        raise AssertionError("the annotations were read again")

    monkeypatch.setattr(profile_module, "iter_annotations", no_pass)
    again = components_from_data(config)  # from the cache: no annotation read
    assert again.vocab.bpe_ids == expected.bpe_ids and long_document_report(config) == warning is not None
