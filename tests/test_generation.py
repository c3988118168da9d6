"""Decoding strategies: greedy, beam search, sampling, n-gram blocking, repetition penalty, KV cache."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mmtl.config import GenerationConfig, resolve_config
from mmtl.models.generation import (
    apply_repetition_penalty, banned_ngram_tokens, beam_search, filter_top_k_top_p, generate, sample,
    sequence_logprob,
)
from mmtl.models.heads import TextDecoder
from mmtl.text import BOS, EOS, PAD


pytestmark = pytest.mark.usefixtures("one_thread")


class Bigram(nn.Module):
    """A decoder whose next-token log-probabilities depend only on the previous token (a table)."""

    def __init__(self, table: torch.Tensor, max_length: int = 12) -> None:
        super().__init__()
        self.table, self.max_length = table, max_length

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


def _trap_table() -> torch.Tensor:
    """Greedy takes A (p=.6), after which every continuation is unlikely; B (p=.4) then EOS (p=.99) is better."""
    vocab, A, B = 12, 5, 6
    probs = torch.full((vocab, vocab), 1e-6)
    probs[BOS, A], probs[BOS, B] = 0.6, 0.4
    probs[A, 7:12] = 0.19  # five equally weak continuations, then EOS
    probs[A, EOS] = 0.05
    for t in range(7, 12):
        probs[t, EOS] = 0.9
    probs[B, EOS] = 0.99
    probs[EOS, PAD] = probs[PAD, PAD] = 1.0
    return (probs / probs.sum(1, keepdim=True)).log()


def _memory(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(batch, 1, 4), torch.ones(batch, 1, dtype=torch.bool)


def test_beam_search_beats_greedy_on_a_constructed_trap() -> None:
    decoder = Bigram(_trap_table())
    memory, valid = _memory()
    greedy = generate(decoder, memory, valid, GenerationConfig(max_length=6), use_cache=False)
    beam = generate(decoder, memory, valid, GenerationConfig(max_length=6, num_beams=3, length_penalty=0.0),
                    use_cache=False)
    assert greedy[0, 0].item() == 5 and beam[0].tolist()[:2] == [6, EOS]
    assert sequence_logprob(decoder, memory, valid, beam) > sequence_logprob(decoder, memory, valid, greedy)


def _micro_decoder(vocab: int = 40) -> tuple[TextDecoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    decoder = TextDecoder(vocab, 32, 2, 2, max_length=24).eval()
    with torch.no_grad():  # random weights: make EOS rare so that sequences run long
        decoder.embed.weight[EOS] *= 0.0
    memory = torch.randn(3, 5, 32)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    return decoder, memory, valid


def test_beam_search_with_one_beam_equals_greedy() -> None:
    decoder, memory, valid = _micro_decoder()
    greedy = generate(decoder, memory, valid, GenerationConfig(max_length=15))
    one_beam = beam_search(decoder, memory, valid, GenerationConfig(max_length=15, num_beams=1), 15)
    assert torch.equal(one_beam[:, : greedy.shape[1]], greedy)


@pytest.mark.parametrize("config", [
    GenerationConfig(max_length=15, num_beams=3, length_penalty=0.7),
    GenerationConfig(max_length=15, do_sample=True, top_p=0.9, temperature=0.8, seed=3),
    GenerationConfig(max_length=15, no_repeat_ngram_size=2, repetition_penalty=1.3),
])
def test_cached_and_uncached_decoding_agree_for_every_strategy(config: GenerationConfig) -> None:
    decoder, memory, valid = _micro_decoder()
    cached = generate(decoder, memory, valid, config, use_cache=True)
    plain = generate(decoder, memory, valid, config, use_cache=False)
    assert cached.shape[1] > 3
    assert torch.equal(cached, plain)


def test_beam_search_respects_length_and_ends_rows_with_eos_or_limit() -> None:
    decoder, memory, valid = _micro_decoder()
    out = generate(decoder, memory, valid, GenerationConfig(max_length=7, num_beams=4))
    assert out.shape == (3, 7) or out.shape[1] < 7
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def test_no_repeat_ngram_output_never_repeats_an_ngram() -> None:
    decoder, memory, valid = _micro_decoder(vocab=16)  # small vocabulary: plain greedy repeats itself
    config = GenerationConfig(max_length=20, min_length=20)
    plain = generate(decoder, memory, valid, config).tolist()
    blocked = generate(decoder, memory, valid, dataclasses.replace(config, no_repeat_ngram_size=2)).tolist()
    blocked_beam = generate(decoder, memory, valid, dataclasses.replace(config, no_repeat_ngram_size=2, num_beams=2))

    def bigrams(row: list[int]) -> list[tuple[int, int]]:
        row = row[: row.index(EOS)] if EOS in row else row
        return [tuple(row[i : i + 2]) for i in range(len(row) - 1)]

    assert any(len(set(bigrams(r))) < len(bigrams(r)) for r in plain)  # the test case does repeat
    for row in blocked + blocked_beam.tolist():
        grams = bigrams(row)
        assert len(set(grams)) == len(grams)


def test_banned_ngram_tokens_and_repetition_penalty() -> None:
    assert banned_ngram_tokens([[4, 5, 4], [4, 5, 6]], 2) == [{5}, set()]
    assert banned_ngram_tokens([[7, 7]], 1) == [{7}]
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_top_k_and_top_p_filtering() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    probs = logits.softmax(-1)[0]  # about .64, .24, .09, .03
    kept = ~torch.isinf(filter_top_k_top_p(logits, 0, float(probs[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False]]


def test_sampling_is_reproducible_with_a_seed_and_top_k_1_is_greedy() -> None:
    decoder, memory, valid = _micro_decoder()
    config = GenerationConfig(max_length=15, do_sample=True, temperature=1.5, seed=7)
    first, again = generate(decoder, memory, valid, config), generate(decoder, memory, valid, config)
    other = generate(decoder, memory, valid, dataclasses.replace(config, seed=8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    greedy = generate(decoder, memory, valid, GenerationConfig(max_length=15))
    top1 = sample(decoder, memory, valid, dataclasses.replace(config, top_k=1), 15)
    assert torch.equal(top1, greedy)


class CountDown(nn.Module):
    """Emits token 5 until the row's generated length reaches ``memory[row, 0, 0]``, then EOS."""

    max_length = 20

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(ids.shape[0], ids.shape[1], 8)
        logits[..., 5] = 1.0
        position = torch.arange(1, ids.shape[1] + 1)[None, :]
        logits[..., EOS] = torch.where(position >= memory[:, :1, 0], 10.0, -10.0)
        return logits


@pytest.mark.parametrize("beams", [1, 3])
def test_rows_stop_at_their_own_eos_and_min_length_delays_it(beams: int) -> None:
    memory, valid = torch.tensor([[[2.0]], [[4.0]], [[6.0]]]), torch.ones(3, 1, dtype=torch.bool)
    # the decoder writes "5 5 5 ...": no n-gram blocking, which would cut that loop (what this test is not about)
    out = generate(CountDown(), memory, valid, GenerationConfig(max_length=15, num_beams=beams, no_repeat_ngram_size=0,
                                                                no_immediate_repeat_size=0),
                   use_cache=False)
    assert out.tolist() == [[5, EOS, PAD, PAD, PAD, PAD], [5, 5, 5, EOS, PAD, PAD], [5, 5, 5, 5, 5, EOS]]
    looping = GenerationConfig(max_length=15, min_length=5, num_beams=beams, no_repeat_ngram_size=0,
                               no_immediate_repeat_size=0)
    forced = generate(CountDown(), memory, valid, looping, use_cache=False)
    assert forced[:, :5].eq(5).all() and forced[:, 5].eq(EOS).all()


def test_generation_task_uses_options_generation() -> None:
    from mmtl.builder import build_components
    from mmtl.config import EvalConfig
    from mmtl.text import Vocabulary

    vocab = Vocabulary.from_texts(["a red circle left of a blue square"])
    config = resolve_config({}, ["model.preset=micro", "tasks=[captioning]"])
    parts = build_components(config, [], vocab)
    task, head = parts.tasks[0], parts.model.heads["captioning"].eval()
    from mmtl.models.fusion import Fused

    tokens = torch.randn(2, 3, 32)
    fused = Fused(tokens, torch.ones(2, 3, dtype=torch.bool), tokens.mean(1))
    options = EvalConfig(generation=GenerationConfig(max_length=4, min_length=4))
    outputs = task.predict(head, fused, options)
    # the same decoding by hand: the options' settings, the task's own for what they leave unset, its word table
    ids = head.generate(fused.tokens, fused.valid, config=task.decoding(options.generation), words=task.word_table())
    assert ids.shape == (2, 4) and outputs == [vocab.decode(r) for r in ids.tolist()]
