"""Whole words in generated text (issue #28): decode-time rules that keep a decoder from writing pieces of words.

The BPE vocabulary splits a rare word into several tokens ("effectively" -> "effec" + "tively</w>"), and a
copying decoder copies one token at a time, so it can paste the tail of a document word ("tively") or glue
pieces of several into one. Three rules, applied to the next-token logits of greedy decoding, sampling and
beam search alike (training is unchanged):

1. at a word start only a token that begins a word is allowed: a token that begins a word of the row's
   document, or one that is by itself a whole word of the vocabulary's training texts (begins one,
   ``Vocabulary.word_initial``, and ends a word; a vocabulary without that list skips this rule). A
   training word of several tokens that the document does not hold is not written: its first token could
   go on with any token and glue a made-up word (SciTLDR, tiny: "propag" + "estimator", 8 of 100 outputs);
2. a begun document word is completed: when the tokens of the word being written are the first tokens of
   some document word, only that word's continuations are allowed; and no word is left unfinished (no end
   of text inside a word);
3. the last token the decoder may write ends its word.

A row where the rules would leave no finite logit keeps its logits unchanged (the rules never make a
decoder write nothing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mmtl.text import EOS, SPECIAL_TOKENS, UNK, Vocabulary, bpe_tokenizer

WORD_END = "</w>"


@dataclass(frozen=True)
class WordTable:
    """Per vocabulary id (V,): whether the token ends a word, and whether it may begin one (None: unknown)."""

    ends_word: torch.Tensor
    begins_word: torch.Tensor | None

    @classmethod
    def of(cls, vocab: Vocabulary) -> "WordTable":
        """The table of ``vocab`` (special tokens neither end nor begin a word)."""
        strings = bpe_tokenizer().decoder
        ends = torch.zeros(vocab.size, dtype=torch.bool)
        for vocab_id in range(len(SPECIAL_TOKENS), vocab.size):
            ends[vocab_id] = strings[vocab.bpe_of(vocab_id)].endswith(WORD_END)
        begins = None
        if vocab.word_initial is not None:
            initial = set(vocab.word_initial)
            begins = torch.tensor([vocab.bpe_of(i) in initial for i in range(vocab.size)], dtype=torch.bool)
        return cls(ends, begins)


def document_words(ids: list[int], ends_word: list[bool]) -> list[tuple[int, ...]]:
    """The words of one document's vocabulary ids: runs of tokens closed by a word-ending token (PAD, BOS and
    EOS are skipped; an unfinished last word, cut by the text context, is left out). A word holding <unk>
    (a piece the vocabulary lacks) is left out up to the next word end: skipping the piece would glue the
    word's head to the next word's tail ("chor" <unk> "et" -> "choret")."""
    words, current, broken = [], [], False
    for token in ids:
        if token == UNK:
            current, broken = [], True
            continue
        if token < len(SPECIAL_TOKENS):
            continue
        current.append(token)
        if ends_word[token]:
            if not broken:
                words.append(tuple(current))
            current, broken = [], False
    return words


class WholeWords:
    """The rules of this module for one decoded batch (rows: samples, or beams of samples)."""

    def __init__(self, table: WordTable, memory_ids: torch.Tensor | None, rows: int) -> None:
        self.table = table
        self._ends = table.ends_word.tolist()
        self.continuations: list[dict[tuple[int, ...], set[int]]] = []
        self.initial: list[torch.Tensor] = []
        for row in range(rows):
            words = document_words(memory_ids[row].tolist(), self._ends) if memory_ids is not None else []
            self.continuations.append(_continuations(words))
            # a word of the vocabulary that the document does not hold is written as one token: a begun word
            # that is no document word's beginning could otherwise go on with any token ("propag" + "estimator")
            begins = table.begins_word & table.ends_word if table.begins_word is not None else None
            if begins is not None and words:
                begins[torch.tensor(sorted({w[0] for w in words}))] = True
            self.initial.append(begins)

    def open_word(self, generated: list[int]) -> tuple[int, ...]:
        """The tokens of the word being written at the end of ``generated`` (empty at a word start)."""
        start = len(generated)
        while start > 0 and generated[start - 1] >= len(SPECIAL_TOKENS) and not self._ends[generated[start - 1]]:
            start -= 1
        return tuple(generated[start:])

    def allowed(self, row: int, generated: list[int], last: bool) -> torch.Tensor | None:
        """Which next tokens (V,) the rules allow after ``generated`` (None: any)."""
        if generated and generated[-1] < len(SPECIAL_TOKENS):  # the row ended (EOS, then PAD)
            return None
        word = self.open_word(generated)
        allowed = None
        if not word:
            allowed = self.initial[row].clone() if self.initial[row] is not None else None
            if allowed is not None:
                allowed[EOS] = True
        else:
            following = self.continuations[row].get(word)
            if following:
                allowed = torch.zeros_like(self.table.ends_word)
                allowed[torch.tensor(sorted(following))] = True
            else:
                allowed = torch.ones_like(self.table.ends_word)
                allowed[:len(SPECIAL_TOKENS)] = False  # no end of text inside a word
        if last:  # the last token ends its word (a begun document word that cannot end here is given up)
            ends = self.table.ends_word.clone()
            ends[EOS] = not word
            both = ends if allowed is None else allowed & ends
            allowed = both if bool(both.any()) else ends
        return allowed

    def apply(self, logits: torch.Tensor, generated: torch.Tensor, last: bool,
              unbanned: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """``logits`` (N, V) with the tokens the rules forbid at -inf, after ``generated`` (N, t).

        Where other rules (no-repeat n-grams) already forbade every token these rules allow, the row is
        taken from ``unbanned()`` (the logits without those rules) instead: a repeated n-gram reads
        better than a piece of a word. Only when nothing is allowed even there does the row stay as it is."""
        rows = generated.tolist()
        out = logits.clone()
        fallback: torch.Tensor | None = None
        for row, tokens in enumerate(rows):
            allowed = self.allowed(row, tokens, last)
            if allowed is None:
                continue
            allowed = allowed.to(logits.device)
            masked = logits[row].masked_fill(~allowed, float("-inf"))
            if not bool(torch.isfinite(masked).any()) and unbanned is not None:
                fallback = unbanned() if fallback is None else fallback
                masked = fallback[row].masked_fill(~allowed, float("-inf"))
            if bool(torch.isfinite(masked).any()):
                out[row] = masked
        return out


def _continuations(words: list[tuple[int, ...]]) -> dict[tuple[int, ...], set[int]]:
    """Begun word (its first tokens) -> the tokens that continue it, over the multi-token ``words``."""
    following: dict[tuple[int, ...], set[int]] = {}
    for word in words:
        for cut in range(1, len(word)):
            following.setdefault(word[:cut], set()).add(word[cut])
    return following
