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


TRAINING_TEXTS = ["we propose a hyperparameter optimizer", "the adaparizer is efficient"]


def _vocab_and_table():
    from mmtl.models.words import WordTable

    vocab = Vocabulary.from_texts(TRAINING_TEXTS)
    return vocab, WordTable.of(vocab)


def _ids(vocab: Vocabulary, text: str) -> list[int]:
    return vocab.encode(text, 100)


def test_vocabulary_knows_the_tokens_that_begin_words_and_keeps_them_in_its_dict() -> None:
    vocab, table = _vocab_and_table()
    hyper, par, ameter = _ids(vocab, "hyperparameter")
    assert table.begins_word[hyper] and not table.begins_word[par] and not table.begins_word[ameter]
    assert table.ends_word[ameter] and not table.ends_word[hyper]
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again.word_initial == vocab.word_initial and again.bpe_ids == vocab.bpe_ids
    old = {key: value for key, value in vocab.to_dict().items() if key != "word_initial"}
    assert Vocabulary.from_dict(old).word_initial is None  # an older checkpoint: that rule is skipped


def _favouring(vocab_size: int, token: int) -> "torch.Tensor":
    import torch

    logits = torch.zeros(1, vocab_size)
    logits[0, token] = 10.0
    return logits


def test_whole_word_rules_on_the_next_token() -> None:
    import torch

    from mmtl.models.words import WholeWords
    from mmtl.text import EOS

    vocab, table = _vocab_and_table()
    hyper, par, ameter = _ids(vocab, "hyperparameter")
    adap, ari, zer = _ids(vocab, "adaparizer")
    document = torch.tensor([_ids(vocab, "a hyperparameter optimizer")])
    rules = WholeWords(table, document, rows=1)

    def pick(generated: list[int], favoured: int, last: bool = False) -> int:
        logits = rules.apply(_favouring(vocab.size, favoured), torch.tensor([generated], dtype=torch.long), last)
        return int(logits.argmax(-1))

    assert pick([], zer) != zer  # "zer" begins no word: not at a word start
    assert pick([], hyper) == hyper
    assert pick([hyper], zer) == par and pick([hyper, par], zer) == ameter  # the begun document word is completed
    assert pick([adap], EOS) != EOS  # no end of text inside a word
    assert table.ends_word[pick([adap], ari, last=True)]  # the last token ends its word
    assert pick([hyper, par, ameter], EOS) == EOS


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"do_sample": True, "seed": 1}])
def test_decoding_writes_whole_words(options: dict) -> None:
    import torch

    from mmtl.config import GenerationConfig
    from mmtl.models.heads import DecoderOptions, TextDecoder
    from mmtl.models.words import WordTable, document_words

    torch.manual_seed(0)
    vocab, table = _vocab_and_table()
    decoder = TextDecoder(vocab.size, 16, 1, 2, 24, DecoderOptions(copy=True)).eval()
    document = torch.tensor([_ids(vocab, "the hyperparameter optimizer adaparizer")] * 2)
    memory = torch.randn(2, document.shape[1], 16)
    valid = torch.ones_like(document, dtype=torch.bool)
    config = GenerationConfig(max_length=12, min_length=12, **options)
    out = decoder.generate(memory, valid, config=config, memory_ids=document, words=table).tolist()
    initial = set(torch.nonzero(table.begins_word).flatten().tolist())
    for row in out:
        tokens = [t for t in row if t > 3]
        words = document_words(tokens, table.ends_word.tolist())
        assert sum(map(len, words)) == len(tokens)  # the last token ends its word
        assert all(word[0] in initial for word in words)
    assert decoder.generate(memory, valid, config=GenerationConfig(max_length=12, whole_words=False), memory_ids=document,
                            words=table).shape[0] == 2


def test_word_by_word_encoding_is_the_tokenizer_encoding() -> None:
    from mmtl.text import bpe_encode, bpe_encode_words

    text = "An effectively-efficient Hyperparameter optimizer (2017), don't!"
    words = bpe_encode_words(text)
    assert [i for word in words for i in word] == bpe_encode(text) and len(words) == len(text_words(text))


def test_label_smoothing_is_a_setting_of_generation_tasks_off_by_default() -> None:
    import torch

    from mmtl.config import TaskSettingsConfig, load_config
    from mmtl.errors import ConfigError
    from mmtl.models.fusion import Fused
    from mmtl.tasks.captioning import CaptioningTask

    vocab = Vocabulary.from_texts(TRAINING_TEXTS)
    plain = CaptioningTask(TaskContext([], vocab, ModelConfig()))
    assert plain.settings.label_smoothing == 0.0
    smoothed = CaptioningTask(TaskContext([], vocab, ModelConfig(),
                                          task_settings={"captioning": TaskSettingsConfig({"label_smoothing": 0.1})}))
    torch.manual_seed(0)
    head = plain.build_head(ModelConfig(width=16, num_heads=2))
    fused = Fused(torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 16))
    target = plain.collate([[1, 5, 6, 2], [1, 7, 2]])
    with torch.no_grad():
        assert float(smoothed.loss(head, fused, target)) != pytest.approx(float(plain.loss(head, fused, target)))
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(None, ["task_settings.summarization.label_smoothing=1.5"])


def test_an_ngram_may_repeat_as_often_as_the_document_repeats_it() -> None:
    from collections import Counter

    from mmtl.models.generation import banned_ngram_tokens, document_ngrams

    # "# person 1 #" twice in a dialogue: a summary may name #person1# twice, not a third time
    dialogue = [[9, 4, 5, 9, 8, 9, 4, 5, 9, 0, 0]]
    allowance = document_ngrams(dialogue, 3)
    assert allowance == [Counter({(9, 4, 5): 2, (4, 5, 9): 2, (5, 9, 8): 1, (9, 8, 9): 1, (8, 9, 4): 1})]
    assert banned_ngram_tokens([[9, 4, 5, 9, 7, 9, 4]], 3, allowance) == [set()]
    assert banned_ngram_tokens([[9, 4, 5, 9, 4, 5, 9, 7, 9, 4]], 3, allowance) == [{5}]
    assert banned_ngram_tokens([[6, 7, 6]], 2, [Counter()]) == [{7}]  # not in the document: no repeat


def _looping_decoder():
    """A decoder that prefers 4 after anything but 4, then 5: "4 5 4 5 ..." until the length runs out (4-gram
    blocking lets "4 5 4 5" through once)."""
    import torch
    from torch import nn

    class Looping(nn.Module):
        max_length = 32

        def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(ids.shape[0], ids.shape[1], 10)
            logits[..., 4] = torch.where(ids == 4, 0.0, 5.0)
            logits[..., 5] = torch.where(ids == 4, 5.0, 1.0)
            logits[..., 6:] = torch.linspace(0.5, 0.1, 4)
            return logits

    return Looping()


def test_default_decoding_does_not_loop() -> None:
    import torch

    from mmtl.config import GenerationConfig
    from mmtl.models.generation import generate

    memory, valid = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    unblocked = GenerationConfig(max_length=12, no_repeat_ngram_size=0, no_immediate_repeat_size=0)
    looped = generate(_looping_decoder(), memory, valid, unblocked, use_cache=False)
    assert looped[0].tolist()[:6] == [4, 5, 4, 5, 4, 5]
    row = generate(_looping_decoder(), memory, valid, GenerationConfig(max_length=12), use_cache=False)[0].tolist()
    grams = [tuple(row[i:i + 4]) for i in range(len(row) - 3)]
    assert len(grams) == len(set(grams))  # the default blocks repeated 4-grams


def test_a_word_the_document_does_not_hold_is_written_only_as_one_whole_token() -> None:
    """SciTLDR, tiny, 300 steps: 8 of 100 default summaries held a made-up word ("propag" + "estim" + "ator",
    "co" + "to"): a word begun with a token that begins some training word, but no word of the document,
    could go on with any token. Such a word must now be one token that ends a word."""
    import torch

    from mmtl.models.words import WholeWords

    vocab, table = _vocab_and_table()
    adap, ari, zer = _ids(vocab, "adaparizer")  # a training word, not in the document, three tokens
    hyper = _ids(vocab, "hyperparameter")[0]
    (propose,) = _ids(vocab, "propose")  # a training word of one token
    rules = WholeWords(table, torch.tensor([_ids(vocab, "a hyperparameter optimizer")]), rows=1)
    allowed = rules.allowed(0, [], last=False)
    assert not allowed[adap]  # would start a word nothing can finish as a known word
    assert allowed[hyper] and allowed[propose]
    assert WholeWords(table, torch.tensor([_ids(vocab, "the adaparizer")]), rows=1).allowed(0, [], False)[adap]


def test_a_document_word_with_an_unknown_piece_is_no_document_word() -> None:
    """SciTLDR, tiny: "Choromanska et al" encodes as "chor" <unk> ... "et</w>", and skipping the <unk> made
    "chor" + "et" one document word, so the decoder copied the made-up "choret" (2 of 100 outputs)."""
    from mmtl.models.words import document_words
    from mmtl.text import BOS, EOS, PAD, UNK

    vocab, table = _vocab_and_table()
    hyper, par, ameter = _ids(vocab, "hyperparameter")
    optimizer = _ids(vocab, "optimizer")
    ends = table.ends_word.tolist()
    assert document_words([BOS, hyper, par, ameter, EOS, PAD], ends) == [(hyper, par, ameter)]
    # the word holding <unk> and the pieces after it up to its end are left out; the next word is kept
    assert document_words([BOS, hyper, UNK, ameter, *optimizer, EOS], ends) == [tuple(optimizer)]
    assert document_words([UNK, ameter, *optimizer], ends) == [tuple(optimizer)]


def test_the_decoder_reads_its_document_once_though_its_copy_memory_holds_the_text_twice() -> None:
    """With the encoder's tokens kept beside the fusion's (model.fusion.keep_inputs), the ids a copying decoder
    copies from hold the text twice. The whole-word rules and the no-repeat allowance read them as the
    document: every document n-gram counted twice (so written twice), and a document cut at the context
    length glued its last word to its first ("dee" + "recent" -> "deerecent", SciTLDR, tiny)."""
    from collections import Counter

    import torch
    from torch import nn

    from mmtl.config import GenerationConfig
    from mmtl.models.encoders import Stream
    from mmtl.models.fusion import Fused, with_inputs
    from mmtl.models.generation import Constraints

    text = torch.tensor([[7, 8, 9, 7, 8]])  # a document that fills the context: no PAD after it
    stream = Stream(torch.zeros(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), "text", text)
    fused = Fused(torch.zeros(1, 6, 4), torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, 4),
                  torch.cat([torch.zeros(1, 1, dtype=torch.long), text], dim=1))
    (out,) = with_inputs({None: fused}, [stream], nn.LayerNorm(4)).values()
    assert out.ids.tolist() == [[0, 7, 8, 9, 7, 8, 7, 8, 9, 7, 8]]  # copying reads both copies
    assert out.document_ids.tolist() == [[7, 8, 9, 7, 8]]  # the document, once
    assert out.select(torch.tensor([0])).document_ids.tolist() == [[7, 8, 9, 7, 8]]
    assert fused.document_ids is fused.ids  # without kept inputs the fused ids are the document
    config = GenerationConfig(no_repeat_ngram_size=2)
    constraints = Constraints.of(config, None, out.document_ids, rows=1)
    assert constraints.allowance == [Counter({(7, 8): 2, (8, 9): 1, (9, 7): 1})]


def test_a_summary_is_decoded_against_its_document_once() -> None:
    """SummarizationTask.predict hands the decoder both: the copy memory and the document."""
    import torch

    from mmtl.models.fusion import Fused

    vocab = Vocabulary.from_texts([DOCUMENT])
    task = SummarizationTask(TaskContext([], vocab, ModelConfig()))
    seen: dict = {}

    class Head:
        def generate(self, memory, memory_valid, **kwargs):
            seen.update(kwargs)
            return torch.zeros(1, 1, dtype=torch.long)

    ids, document = torch.tensor([[0, 7, 8, 7, 8]]), torch.tensor([[7, 8]])
    fused = Fused(torch.zeros(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), torch.zeros(1, 4), ids, document)
    task.predict(Head(), fused, None)
    assert seen["memory_ids"] is ids and seen["document_ids"] is document


def test_an_immediate_repeat_is_forbidden_unless_the_document_repeats_it() -> None:
    from mmtl.models.generation import document_immediate_repeats, immediate_repeat_tokens

    # after "7 8 7": 7 would repeat the run "7", 8 the run "7 8" ("graph neural graph neural")
    assert immediate_repeat_tokens([[7, 8, 7], [4, 5, 6]], 3) == [{7, 8}, {6}]
    assert immediate_repeat_tokens([[7, 8, 7]], 0) == [set()]
    # a dialogue that says "9 4 9 4" lets its summary say it too
    allowed = document_immediate_repeats([[9, 4, 9, 4, 0, 0]], 3)
    assert allowed == [{(9, 4, 9, 4)}]
    assert immediate_repeat_tokens([[9, 4, 9]], 3, allowed) == [{9}]


def test_decoding_can_forbid_immediate_repeats_that_ngram_blocking_lets_through() -> None:
    import torch

    from mmtl.config import GenerationConfig
    from mmtl.models.generation import generate

    memory, valid = torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    unblocked = GenerationConfig(max_length=12, no_immediate_repeat_size=0)
    blocked = generate(_looping_decoder(), memory, valid, unblocked, use_cache=False)[0].tolist()
    assert blocked[:4] == [4, 5, 4, 5]
    assert GenerationConfig().no_immediate_repeat_size == 4  # on by default (issue #28)
    config = GenerationConfig(max_length=12, no_immediate_repeat_size=3)
    row = generate(_looping_decoder(), memory, valid, config, use_cache=False)[0].tolist()
    assert not any(row[i:i + k] == row[i + k:i + 2 * k] for k in (1, 2, 3) for i in range(len(row) - 2 * k + 1))


def test_immediate_repeats_count_words_and_forbid_the_first_token_of_the_repeating_word() -> None:
    from mmtl.models.generation import document_immediate_repeats, immediate_repeat_tokens

    # 7 "diction" + 8 "aries</w>" is one word; 9 ends a word by itself
    ends = [False] * 7 + [False, True, True]
    assert immediate_repeat_tokens([[7, 8]], 2, ends_word=ends) == [{7}]  # not "dictionaries dictionaries"
    assert immediate_repeat_tokens([[7]], 2, ends_word=ends) == [set()]  # inside a word: the word rules decide
    assert immediate_repeat_tokens([[7, 8, 9, 7, 8]], 2, ends_word=ends) == [{7, 9}]
    allowed = document_immediate_repeats([[7, 8, 7, 8, 0]], 2, ends)
    assert allowed == [{(7, 8, 7, 8)}]
    assert immediate_repeat_tokens([[7, 8]], 2, allowed, ends) == [set()]
