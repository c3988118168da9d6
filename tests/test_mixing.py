"""Mixing several sources: each strategy gives its task shares, computed from dataset.json counts."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from data_pipelines.loader import LoaderSettings, make_loader
from data_pipelines.mixing import Source, plan_mixing, source_counts, target_task_shares, training_sources
from data_pipelines.shards import SplitStats, write_dataset_info
from mmtl.builder import build_components, components_from_data
from mmtl.config import load_config, resolve_config
from mmtl.errors import ConfigError, MMTLError
from mmtl.text import Vocabulary

CLASSES = ["red circle", "blue square"]


def write_source(path: Path, prefix: str, count: int, make) -> None:
    """Image-less samples (fast to decode) from ``make(i)`` -> annotation, in shards of 25."""
    path.mkdir(parents=True, exist_ok=True)
    stats = SplitStats()
    for start in range(0, count, 25):
        name = f"train-{start // 25:06d}.tar"
        with wds.TarWriter(str(path / name)) as sink:
            for i in range(start, min(start + 25, count)):
                annotation = make(i)
                stats.tasks.update(t for t, f in (("recognition", "labels"), ("captioning", "captions"),
                                                  ("summarization", "summaries")) if annotation.get(f))
                sink.write({"__key__": f"{prefix}{i:04d}", "json": json.dumps(annotation).encode()})
        stats.shards.append(name)
    stats.samples = count
    write_dataset_info(path, prefix, {"train": stats}, CLASSES, {})


def tagged(i: int) -> dict:  # recognition on every sample, captioning on every other one
    caption = {"captions": ["a red circle"]} if i % 2 == 0 else {}
    return {"labels": [CLASSES[i % 2]], **caption}


def documents(i: int) -> dict:
    return {"document": "anna drew a red circle near the top .", "summaries": ["anna drew a red circle"]}


def captions(i: int) -> dict:
    return {"captions": ["a blue square"]}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    paths = {"tagged": root / "tagged", "docs": root / "docs", "captions": root / "captions"}
    write_source(paths["tagged"], "t", 300, tagged)  # recognition 300, captioning 150
    write_source(paths["docs"], "d", 100, documents)  # summarization 100
    write_source(paths["captions"], "c", 400, captions)  # captioning 400
    return paths


@pytest.fixture(scope="module")
def parts():
    config = resolve_config({}, ["model.preset=micro"])
    vocab = Vocabulary.from_texts(["a red circle", "a blue square", "anna drew a red circle near the top ."])
    return build_components(config, CLASSES, vocab)


def _rows(sources_: list[Source], parts, strategy: str, batches: int = 40, **kwargs) -> tuple[dict[str, float], list]:
    loader = make_loader(sources_, "train", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=16, train=True,
                                        shuffle_buffer=50, mixing=strategy, seed=1, **kwargs))
    iterator = iter(loader)
    taken = [next(iterator) for _ in range(batches)]
    rows = Counter()
    for batch in taken:
        for task, target in batch.targets.items():
            rows[task] += len(target["index"])
    total = sum(rows.values())
    return {t: n / total for t, n in rows.items()}, taken, loader.plan


def test_temperature_shares_follow_the_formula_on_dataset_counts(sources) -> None:
    tagged_, docs = Source(str(sources["tagged"]), "train"), Source(str(sources["docs"]), "train")
    counts = [source_counts(s, ["recognition", "captioning", "summarization"]) for s in (tagged_, docs)]
    n = {"recognition": 300, "captioning": 150, "summarization": 100}  # as dataset.json counts them
    for strategy, temperature in (("proportional", 1.0), ("temperature", 2.0), ("temperature", 5.0)):
        expected = {t: v ** (1 / temperature) for t, v in n.items()}
        norm = sum(expected.values())
        shares = target_task_shares(strategy, counts, temperature if strategy == "temperature" else 99.0)
        assert shares == pytest.approx({t: v / norm for t, v in expected.items()})


@pytest.mark.parametrize("strategy, temperature, expected", [
    ("natural", 2.0, {"captioning": 0.8, "summarization": 0.2}),
    ("proportional", 2.0, {"captioning": 0.8, "summarization": 0.2}),
    ("temperature", 2.0, {"captioning": 2 / 3, "summarization": 1 / 3}),  # sqrt(400) : sqrt(100)
    ("temperature", 1e6, {"captioning": 0.5, "summarization": 0.5}),  # T -> inf: equal
])
def test_each_strategy_gives_the_configured_task_shares(sources, parts, strategy, temperature, expected) -> None:
    both = [Source(str(sources["captions"]), "train"), Source(str(sources["docs"]), "train")]
    measured, _, plan = _rows(both, parts, strategy, mixing_temperature=temperature)
    assert plan.task_shares == pytest.approx(expected, abs=1e-3)
    assert measured == pytest.approx(expected, abs=0.06)  # 640 rows: 3 to 4 standard deviations


def test_fixed_ratios_come_from_the_weights(sources, parts) -> None:
    both = [Source(str(sources["captions"]), "train", weight=1.0), Source(str(sources["docs"]), "train", weight=3.0)]
    measured, taken, plan = _rows(both, parts, "fixed")
    assert plan.probabilities == pytest.approx([0.25, 0.75])
    assert measured == pytest.approx({"captioning": 0.25, "summarization": 0.75}, abs=0.06)


def test_a_source_feeding_two_tasks_gets_the_closest_mixture(sources, parts) -> None:
    """Recognition and captioning come from one source in a fixed 2:1 ratio: the shares are the best reachable."""
    both = [Source(str(sources["tagged"]), "train"), Source(str(sources["docs"]), "train")]
    measured, taken, plan = _rows(both, parts, "temperature", mixing_temperature=2.0)
    assert plan.task_shares["recognition"] == pytest.approx(2 * plan.task_shares["captioning"])
    target = plan.target_task_shares
    assert abs(plan.task_shares["summarization"] - target["summarization"]) < 0.05
    assert measured == pytest.approx(plan.task_shares, abs=0.06)
    # a sample with two annotations is one row feeding both tasks
    batch = next(b for b in taken if "captioning" in b.targets)
    assert set(batch.targets["captioning"]["index"].tolist()) <= set(batch.targets["recognition"]["index"].tolist())


def test_a_source_can_be_limited_to_some_tasks(sources, parts) -> None:
    limited = [Source(str(sources["tagged"]), "train", tasks=("captioning",)), Source(str(sources["docs"]), "train")]
    measured, _, plan = _rows(limited, parts, "natural", batches=20)
    assert "recognition" not in measured and set(measured) == {"captioning", "summarization"}


@pytest.mark.parametrize("workers", [0, 2])
def test_round_robin_alternates_sources_batch_by_batch(sources, parts, workers: int) -> None:
    both = [Source(str(sources["captions"]), "train"), Source(str(sources["docs"]), "train")]
    measured, taken, _ = _rows(both, parts, "round_robin", batches=8, num_workers=workers)
    assert [{k[0] for k in b.keys} for b in taken] == [{"c"}, {"d"}] * 4
    # and it resumes in step: batch 3 of a loader started there is batch 3 of the full stream
    loader = make_loader(both, "train", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=16, train=True,
                                        shuffle_buffer=50, mixing="round_robin", seed=1, num_workers=workers, start_batch=3))
    iterator = iter(loader)
    assert [next(iterator).keys for _ in range(5)] == [b.keys for b in taken[3:8]]


def test_mixed_epochs_see_every_sample_of_every_source_once(sources, parts) -> None:
    both = [Source(str(sources["captions"]), "train"), Source(str(sources["docs"]), "train")]
    loader = make_loader(both, "train", parts.tasks, parts.vocab,
                         LoaderSettings(image_size=32, context_length=64, batch_size=16, train=True, mode="epoch",
                                        epochs=1, mixing="temperature", num_workers=2))
    keys = Counter(k for b in loader for k in b.keys)
    assert len(keys) == 500 and set(keys.values()) == {1}


def test_sources_from_config_build_classes_and_vocabulary(sources) -> None:
    config = resolve_config({"data": {"sources": [{"path": str(sources["tagged"]), "tasks": ["recognition"]},
                                                  {"path": str(sources["docs"]), "weight": 2}], "mixing": "fixed"}},
                            ["model.preset=micro"])
    assert [(s.path, s.split, s.tasks, s.weight) for s in training_sources(config.data)] == [
        (str(sources["tagged"]), "train", ("recognition",), 1.0), (str(sources["docs"]), "train", None, 2.0)]
    parts = components_from_data(config)
    assert parts.classes == CLASSES
    assert parts.vocab.encode("anna drew a red circle", 16)[-1] != 3  # document words are in the vocabulary
    # the example config with two sources parses
    example = load_config(Path(__file__).resolve().parents[1] / "configs" / "data" / "mixed.yaml")
    assert len(example.data.sources) == 2 and example.data.mixing == "temperature"


def test_bad_mixing_settings_are_clear_errors(sources, parts) -> None:
    with pytest.raises(ConfigError, match="data.mixing must be one of"):
        resolve_config({}, ["data.mixing=random"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].tasks names dancing"):
        resolve_config({"data": {"sources": [{"path": "x", "tasks": ["dancing"]}]}})
    with pytest.raises(MMTLError, match="split 'nope'"):
        plan_mixing([Source(str(sources["docs"]), "nope")], ["summarization"])
