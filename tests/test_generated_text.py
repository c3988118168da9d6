"""Generated text that reads like text (issue #28): the word-fragment checker, stock openings, whole-word
copying and the decoding defaults."""
from __future__ import annotations

import pytest

from mmtl.config import ModelConfig
from mmtl.tasks.base import TaskContext
from mmtl.tasks.metrics import top_opening
from mmtl.tasks.summarization import SummarizationTask
from mmtl.text import Vocabulary, copied_fragments, count_fragment_outputs, known_words, text_words

DOCUMENT = "an effectively - efficient hyperparameter optimizer , adaparizer , is proposed ."


def test_text_words_are_the_tokenizer_words() -> None:
    assert text_words("Hyper-parameters, 2017!") == ["hyper", "-", "parameters", ",", "2", "0", "1", "7", "!"]
    assert text_words("don't") == ["don", "'t"]


def test_fragments_are_pieces_of_words_not_whole_words() -> None:
    vocabulary = known_words(["we propose a novel method ."])
    # "tively" is the tail of the document's "effectively"; "uriout" is glued from pieces
    assert copied_fragments("we propose a novel tively - efficient uriout", DOCUMENT, vocabulary) == ["tively", "uriout"]
    # whole document words ("adaparizer" included) and known words are never fragments
    assert copied_fragments("we propose adaparizer , an efficient hyperparameter optimizer .", DOCUMENT, vocabulary) == []
    outputs = ["a novel tively method", "a novel method", "adaparizer"]
    assert count_fragment_outputs(outputs, [DOCUMENT, DOCUMENT, ""], vocabulary) == 2  # no document: not a whole word


def test_top_opening_is_the_share_of_the_most_common_four_word_opening() -> None:
    outputs = ["the proposed model outperforms x", "the proposed model outperforms y", "they show that the z", "ok"]
    assert top_opening(outputs) == {"top_opening": 50.0}
    assert top_opening([]) == {"top_opening": 0.0}
    assert top_opening(["a b", "a b"])["top_opening"] == 100.0  # a text shorter than 4 words is its own opening


def test_summaries_report_fragment_outputs_against_their_documents_and_the_training_words() -> None:
    vocab = Vocabulary.from_texts([DOCUMENT, "we propose a method ."])
    task = SummarizationTask(TaskContext([], vocab, ModelConfig()))
    training = [{"document": ["we propose", "a method ."], "summaries": ["a novel method"]}]
    annotations = [{"document": DOCUMENT, "summaries": ["x"]}] * 2
    scores = task.score_against_data(["a novel adaparizer", "we propose tively"], annotations, training)
    assert scores == {"fragment_outputs": pytest.approx(50.0)}
    assert "top_opening" in task.score(["a b c d"], [["a b c d"]])
    assert {"top_opening", "fragment_outputs"} <= set(task.diagnostic_metrics) & set(task.lower_is_better)
