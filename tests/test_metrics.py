import pytest

from mmtl.tasks.metrics import bleu, cider, multilabel_average_precision, multilabel_scores, rouge
from mmtl.tasks.summarization import lead_sentence
from mmtl.builder import build_components
from mmtl.config import resolve_config
from mmtl.text import Vocabulary


def test_multilabel_scores() -> None:
    classes = ["a", "b", "c"]
    perfect = multilabel_scores([["a"], ["b", "c"]], [["a"], ["c", "b"]], classes)
    assert perfect == {"f1_micro": 1.0, "f1_macro": 1.0, "exact_match": 1.0}
    half = multilabel_scores([["a"], ["b"]], [["a"], ["c"]], classes)
    assert half["f1_micro"] == pytest.approx(0.5) and half["exact_match"] == 0.5


def test_bleu_and_rouge_reward_matches_and_use_all_references() -> None:
    refs = [["a large red circle left of a small blue square", "there is a red circle"]]
    assert bleu(["a large red circle left of a small blue square"], refs)["bleu4"] == pytest.approx(100.0)
    assert bleu(["the green triangle"], refs)["bleu4"] < 5
    assert rouge(["there is a red circle"], refs)["rougeL"] == pytest.approx(100.0)
    assert rouge(["nothing matches"], refs)["rougeL"] == 0.0


def test_trivial_baselines() -> None:
    config = resolve_config({}, ["model.preset=micro"])
    parts = build_components(config, ["x", "y", "z"], Vocabulary.from_texts(["a"]))
    tasks = {t.name: t for t in parts.tasks}
    train = [{"labels": ["x", "y"], "captions": ["c1", "c2"]}, {"labels": ["x"], "captions": ["c1"]},
             {"labels": ["x", "z"], "captions": ["c3"]}]
    assert [n for n, _ in tasks["recognition"].fit_baseline(train)({})] == ["x", "y"]  # median 2 tags
    assert tasks["captioning"].fit_baseline(train)({}) == "c1"
    doc = {"document": "this note is short . anna drew it . more ."}
    assert tasks["summarization"].fit_baseline(train)(doc) == "this note is short ."
    assert lead_sentence("") == ""


def test_multilabel_average_precision_by_hand() -> None:
    classes = ["a", "b", "c"]
    refs = [["a"], ["b"], ["a", "b"]]
    # class a ranks its two positives first: AP 1. Class b scores s0 0.9 (negative), s1 0.8 and s2 0.1
    # (positives): precision 1/2 and 2/3 at its two positives, AP (1/2 + 2/3) / 2 = 7/12. Class c has
    # no positive and is left out of the mean
    scored = [[("a", 0.9), ("b", 0.9)], [("b", 0.8)], [("a", 0.7), ("b", 0.1), ("c", 0.5)]]
    assert multilabel_average_precision(scored, refs, classes)["mAP"] == pytest.approx((1 + 7 / 12) / 2)
    perfect = [[("a", 1.0)], [("b", 1.0)], [("a", 1.0), ("b", 1.0)]]
    assert multilabel_average_precision(perfect, refs, classes)["mAP"] == pytest.approx(1.0)


def test_cider_rewards_consensus_with_the_references() -> None:
    refs = [["a red circle near the top", "a red circle"], ["a blue square", "a small blue square ."],
            ["a green triangle left of a red circle"]]
    exact = cider(["a red circle near the top", "a blue square", "a green triangle left of a red circle"], refs)
    wrong = cider(["a blue square", "a green triangle", "a red circle near the top"], refs)
    assert exact["cider"] > 100 > wrong["cider"] >= 0
    assert cider(["A Blue square."] * 1, [["a blue square"]]) == cider(["a blue square"], [["a blue square"]])
