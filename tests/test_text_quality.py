"""Text that does not collapse: extractive summarization, diversity metrics, the long-document warning."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from data_pipelines.profile import context_keeping
from mmtl.builder import components_from_data, long_document_report
from mmtl.cli import main
from mmtl.config import load_config
from mmtl.errors import ConfigError
from mmtl.tasks.metrics import diversity
from mmtl.tasks.extractive import SentenceExtractor, oracle_sentences, split_sentences
from mmtl.text import Vocabulary
from tests.conftest import micro_overrides

DOCUMENT = ("the weather was mild all week . anna painted a large red circle in the park . "
            "the city council met on tuesday . bob sold his old bicycle .")


def test_oracle_picks_the_sentences_closest_to_the_reference() -> None:
    sentences = split_sentences(DOCUMENT)
    assert len(sentences) == 4 and sentences[1] == "anna painted a large red circle in the park ."
    assert oracle_sentences(sentences, ["anna painted a red circle"], 1) == [1]
    # two sentences: the second one chosen is the one that adds most (bob's bicycle), kept in document order
    assert oracle_sentences(sentences, ["anna painted a red circle and bob sold a bicycle"], 2) == [1, 3]
    # a second sentence that adds nothing is not forced in
    assert oracle_sentences(["anna painted a circle .", "zzz qqq ."], ["anna painted a circle"], 2) == [0]


def test_extractive_target_labels_and_sentences_beyond_the_context() -> None:
    vocab = Vocabulary.from_texts([DOCUMENT])
    first_length = len(vocab.encode(split_sentences(DOCUMENT)[0], 1000))
    extractor = SentenceExtractor(vocab, context_length=first_length + 1, sentences=1, max_sentences=3)
    target = extractor.target(DOCUMENT, ["bob sold a bicycle", "the council met"])
    # max_sentences=3 leaves bob's sentence out; the council sentence is the oracle
    assert target["labels"] == [0.0, 0.0, 1.0]
    # the encoder reads first_length + 1 tokens: the second sentence starts inside, the third beyond
    assert target["beyond"] == [False, False, True]
    assert extractor.target(DOCUMENT, None) is None and extractor.target("", ["x"]) is None


def test_diversity_known_answers() -> None:
    degenerate = diversity(["a a a a"])
    assert degenerate["repetition"] == pytest.approx(75.0)  # 3 of 4 tokens repeat an earlier one
    assert degenerate["distinct2"] == pytest.approx(100 / 3)  # bigram (a, a) three times
    varied = diversity(["The cat sat.", "the cat ran"])
    # tokens: the cat sat . | the cat ran -> bigrams (the,cat) x2, (cat,sat), (sat,.), (cat,ran): 4 of 5 distinct
    assert varied == {"distinct2": pytest.approx(80.0), "repetition": 0.0, "unique_outputs": 100.0}
    assert diversity(["a table ."] * 4)["unique_outputs"] == 25.0  # one caption for every image
    assert diversity(["", "one"]) == {"distinct2": 0.0, "repetition": 0.0, "unique_outputs": 100.0}


def _jsonl_shards(tmp_path: Path, documents: list[str]) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"document": d, "summaries": ["a summary ."]}) + "\n" for d in documents))
    out = tmp_path / "shards"
    assert main(["data", "convert", "--format", "jsonl", "--input", str(rows), "--out", str(out)]) == 0
    return out


def test_long_documents_warn_with_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    documents = ["short text ."] * 3 + [" ".join(["word"] * 40), " ".join(["word"] * 90)]
    data = _jsonl_shards(tmp_path, documents)
    config = load_config(None, [f"data.path={data}", "tasks=[summarization]", "model.preset=micro",
                                "model.text.context_length=32"])
    message = long_document_report(config)
    assert message.startswith("2 of 5 training documents scanned (40%) are longer than model.text.context_length=32")
    assert "longest 90" in message
    # every share is of ALL documents: 3 of 5 are read whole now, and 90 tokens reads all 5 whole
    assert "60% of all documents are read whole" in message
    assert "model.text.context_length=90 keeps 100% of all documents whole" in message
    assert "half" not in message
    with caplog.at_level(logging.WARNING, logger="mmtl.builder"):
        components_from_data(config)
    assert any("2 of 5 training documents" in r.getMessage() for r in caplog.records)
    roomy = load_config(None, [f"data.path={data}", "tasks=[summarization]", "model.text.context_length=128"])
    assert long_document_report(roomy) is None


def test_long_document_advice_names_each_share_of_all_documents(tmp_path: Path) -> None:
    # 10 documents of 10, 20, ..., 100 tokens; a context of 15 reads 1 whole (10%)
    data = _jsonl_shards(tmp_path, [" ".join(["word"] * (10 * n)) for n in range(1, 11)])
    config = load_config(None, [f"data.path={data}", "tasks=[summarization]", "model.preset=micro",
                                "model.text.context_length=15"])
    message = long_document_report(config)
    assert "10% of all documents are read whole" in message
    assert ("model.text.context_length=50 keeps 50% of all documents whole, 90 keeps 90%, 100 keeps 100%"
            in message)


def test_context_lengths_that_keep_a_share_whole() -> None:
    lengths = [30, 10, 20, 40]
    assert context_keeping(lengths, 0.5) == 20  # 10 and 20 fit: 2 of 4
    assert context_keeping(lengths, 0.9) == 40  # 3 of 4 is 75%, short of 90%
    assert context_keeping(lengths, 1.0) == 40
    assert context_keeping(lengths, 0.25) == 10
    assert context_keeping([], 0.5) == 0


@pytest.mark.parametrize("override, message", [
    ("task_settings.summarization.mode=bogus", "task_settings.summarization.mode must be one of abstractive, extractive"),
    ("task_settings.summarization.sentence=2", "unknown config key 'task_settings.summarization.sentence'"),
    ("task_settings.summarization.sentences=0", "need 1 <= sentences <= max_sentences"),
    ("task_settings.captioning.mode=extractive", "task_settings.captioning: 'captioning' is not a task of this run"),
])
def test_bad_task_setting_is_one_line_exit_2(micro_data: Path, tmp_path: Path, capsys, override: str,
                                             message: str) -> None:
    argv = ["train", *micro_overrides(micro_data, tmp_path / "run"), "tasks=[summarization]", override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_task_without_settings_refuses_them() -> None:
    # recognition has settings since issue #29 (head, label_smoothing); counting has none
    with pytest.raises(ConfigError, match="task_settings.counting: this task has no settings"):
        load_config(None, ["tasks=[counting]", "task_settings.counting.mode=x"])


@pytest.mark.usefixtures("one_thread")
def test_extractive_train_eval_predict_round_trip(micro_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    settings = ["task_settings.summarization.mode=extractive", "task_settings.summarization.sentences=2"]
    assert main(["train", *micro_overrides(micro_data, run, steps=3), "tasks=[summarization]", *settings]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["task_settings"]["summarization"]["mode"] == "extractive"
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(run), "--config", str(run / "config.yaml"), "--split", "test",
                 "--output", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "distinct2" in printed and "repetition" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())["model"]["summarization"]
    assert {"rougeL", "distinct2", "repetition", "top_opening", "fragment_outputs"} <= set(metrics)
    assert metrics["fragment_outputs"] == 0.0  # whole sentences of the document hold whole words only

    document = "anna drew a red circle near the top . bob drew a blue square . the sky was grey ."
    assert main(["predict", "--checkpoint", str(run), "--text", document, "--json", "--tasks", "summarization"]) == 0
    summary = json.loads(capsys.readouterr().out)["summarization"]
    chosen = [s for s in split_sentences(document) if s in summary]
    assert len(chosen) == 2 and summary == " ".join(chosen)  # two whole sentences, in document order

    from mmtl import Predictor
    from mmtl.checkpoint import load_pretrained, save_pretrained

    assert Predictor.from_pretrained(run).predict(text=document).summary == summary
    saved = save_pretrained(Predictor.from_pretrained(run).components, tmp_path / "pretrained")
    reloaded = load_pretrained(saved).model
    assert reloaded.tasks["summarization"].settings.mode == "extractive"
    assert reloaded.tasks["summarization"].settings.sentences == 2
