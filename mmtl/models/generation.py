"""Decoding for text decoders: greedy, beam search, top-k / top-p sampling, batched, with a KV cache.

A decoder here is any module with ``forward(ids, memory, memory_valid) -> logits (B, T, V)``,
``new_caches(memory)``, ``step(ids_last, caches, memory_mask) -> logits (B, V)`` and ``max_length``
(``TextDecoder`` and ``PromptedDecoder``). Outputs are ids (B, T) without BOS; a row that ended
(EOS) is padded with PAD. Logits processors follow the usual definitions (Keskar et al. 2019 for
the repetition penalty; Paulus et al. 2017 for no-repeat n-grams).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mmtl.config import GenerationConfig
from mmtl.models.layers import key_mask
from mmtl.models.words import WholeWords, WordTable
from mmtl.text import BOS, EOS, PAD, SPECIAL_TOKENS


def copy_from(memory_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Keyword arguments that let a copying decoder copy the memory's text tokens (none without them):
    decoders that cannot copy never see the argument."""
    return {} if memory_ids is None else {"memory_ids": memory_ids}


class DecodingSession:
    """Next-token logits for a growing prefix, from the KV cache or by re-running the whole prefix."""

    def __init__(self, decoder: nn.Module, memory: torch.Tensor, memory_valid: torch.Tensor, use_cache: bool,
                 memory_ids: torch.Tensor | None = None) -> None:
        self.decoder, self.memory, self.memory_valid = decoder, memory, memory_valid
        self.mask = key_mask(memory_valid)
        # a copying decoder also reads the vocabulary ids behind the memory's text tokens
        self.copy_from = copy_from(memory_ids)
        self.caches = None
        if use_cache:
            self.caches = (decoder.new_caches(memory, memory_valid, **self.copy_from) if self.copy_from
                           else decoder.new_caches(memory))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) of the token after ``ids`` (N, t); with a cache only ``ids[:, -1]`` is new."""
        if self.caches is None:
            return self.decoder(ids, self.memory, self.memory_valid, **self.copy_from)[:, -1]
        return self.decoder.step(ids[:, -1:], self.caches, self.mask)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beams of the same sample: memory rows are identical)."""
        if self.caches is not None:
            for cache in self.caches:
                cache.reorder(index)


def apply_repetition_penalty(logits: torch.Tensor, generated: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Make every token already in ``generated`` (N, t) less likely: positive logits / p, negative * p
    (``None``, a penalty no task resolved: none)."""
    if penalty is None or penalty == 1.0 or generated.shape[1] == 0:
        return logits
    seen = logits.gather(1, generated)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, generated, seen)


def banned_ngram_tokens(generated: list[list[int]], n: int,
                        allowance: list[Counter] | None = None) -> list[set[int]]:
    """Per row, the tokens that would complete an n-gram already present in that row; with ``allowance``
    (per row, n-gram -> times its document holds it) an n-gram may occur as often as its document repeats it."""
    banned: list[set[int]] = []
    for r, row in enumerate(generated):
        tokens: set[int] = set()
        if n > 0 and len(row) >= n - 1:
            prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            seen = Counter(tuple(row[i : i + n]) for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == prefix)
            for gram, count in seen.items():
                if allowance is None or count >= allowance[r].get(gram, 1):
                    tokens.add(gram[-1])
        banned.append(tokens)
    return banned


def _units(tokens: list[int], ends_word: list[bool] | None) -> tuple[list[tuple[int, ...]], bool]:
    """``tokens`` as words (runs closed by a word-ending token; each token alone when ``ends_word`` is None),
    and whether the last word is still open."""
    units: list[tuple[int, ...]] = []
    current: list[int] = []
    for token in tokens:
        current.append(token)
        if ends_word is None or ends_word[token]:
            units.append(tuple(current))
            current = []
    return units, bool(current)


def immediate_repeat_tokens(generated: list[list[int]], size: int, allowed: list[set[tuple[int, ...]]] | None = None,
                            ends_word: list[bool] | None = None) -> list[set[int]]:
    """Per row at a word start, the first tokens of words that would write a run of k <= ``size`` words twice
    in a row ("graph neural graph neural", "painting painting"): n-gram blocking lets a run shorter than its
    n repeat until n + k tokens are written. Words are ``ends_word``'s (each token is one when None); the
    first token, because whole-word decoding must finish a begun word. ``allowed`` (per row, the document's
    own immediate repeats, as token tuples) are not forbidden."""
    banned: list[set[int]] = []
    for r, row in enumerate(generated):
        tokens: set[int] = set()
        words, open_word = _units(row, ends_word)
        for k in range(1, 0 if open_word else min(size, (len(words) + 1) // 2) + 1):
            # writing words[-k] repeats the last k words when the k - 1 before them equal the last k - 1
            if words[len(words) - 2 * k + 1 : len(words) - k] == words[len(words) - k + 1 :]:
                doubled = tuple(t for word in (*words[len(words) - 2 * k + 1 :], words[-k]) for t in word)
                if allowed is None or doubled not in allowed[r]:
                    tokens.add(words[-k][0])
        banned.append(tokens)
    return banned


def document_immediate_repeats(memory_ids: list[list[int]], size: int,
                               ends_word: list[bool] | None = None) -> list[set[tuple[int, ...]]]:
    """Per row, the runs of k <= ``size`` words (as :func:`immediate_repeat_tokens` reads them) that its
    document's text writes twice in a row, as token tuples."""
    out = []
    for row in memory_ids:
        words, _ = _units([t for t in row if t >= len(SPECIAL_TOKENS)], ends_word)
        out.append({tuple(t for word in words[i : i + 2 * k] for t in word) for k in range(1, size + 1)
                    for i in range(len(words) - 2 * k + 1) if words[i : i + k] == words[i + k : i + 2 * k]})
    return out


def document_ngrams(memory_ids: list[list[int]], n: int) -> list[Counter]:
    """Per row, how often each n-gram of its document's text tokens (special tokens left out) occurs."""
    out = []
    for row in memory_ids:
        text = [t for t in row if t >= len(SPECIAL_TOKENS)]
        out.append(Counter(tuple(text[i : i + n]) for i in range(len(text) - n + 1)))
    return out


def process_logits(logits: torch.Tensor, generated: torch.Tensor, config: GenerationConfig,
                   min_length: int, allowance: list[Counter] | None = None,
                   repeats: list[set[tuple[int, ...]]] | None = None, ends_word: list[bool] | None = None) -> torch.Tensor:
    """Repetition penalty, no-repeat n-grams (``allowance``: see :func:`banned_ngram_tokens`), no immediate
    repeats (``repeats``, ``ends_word``: see :func:`immediate_repeat_tokens`) and the minimum length (no EOS
    before it), on (N, V) logits."""
    logits = apply_repetition_penalty(logits, generated, config.repetition_penalty)
    if config.no_repeat_ngram_size > 0 or config.no_immediate_repeat_size > 0:
        history = generated.tolist()
        banned = banned_ngram_tokens(history, config.no_repeat_ngram_size, allowance)
        looped = immediate_repeat_tokens(history, config.no_immediate_repeat_size, repeats, ends_word)
        banned = [tokens | more for tokens, more in zip(banned, looped)]
        rows = [r for r, tokens in enumerate(banned) for _ in tokens]
        cols = [t for tokens in banned for t in tokens]
        if rows:
            logits = logits.index_put((torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)),
                                      torch.tensor(float("-inf"), device=logits.device))
    if generated.shape[1] < min_length:
        logits = logits.clone()
        logits[:, EOS] = float("-inf")
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (0: all), then the smallest set whose probability reaches ``top_p``."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@dataclass(frozen=True)
class DecoderText:
    """The text behind a decoder's memory: ``ids`` (B, S), the vocabulary id of each memory token that came
    from text (what a copying decoder copies), and ``document`` (B, L), each row's text once, as the
    whole-word rules and the no-repeat allowance read it."""

    ids: torch.Tensor
    document: torch.Tensor


def decoder_text(memory_ids: torch.Tensor | None, document_ids: torch.Tensor | None = None) -> DecoderText | None:
    """The :class:`DecoderText` of a memory's text ids (None when no text was fused); the document is
    ``document_ids``, or ``memory_ids`` when they hold the text once."""
    if memory_ids is None:
        return None
    return DecoderText(memory_ids, memory_ids if document_ids is None else document_ids)


def generate(decoder: nn.Module, memory: torch.Tensor, memory_valid: torch.Tensor,
             config: GenerationConfig | None = None, *, max_length: int | None = None,
             use_cache: bool = True, text: DecoderText | None = None, words: WordTable | None = None) -> torch.Tensor:
    """Decode a batch: beam search when ``config.num_beams > 1``, else sampling or greedy.

    ``max_length`` (default ``config.max_length``) counts generated tokens and is capped by the
    decoder's positions. Each row stops at its own EOS; the batch stops when every row has. With
    ``words`` (the vocabulary's word table) and ``config.whole_words``, the decoder writes whole words
    only (mmtl.models.words), and immediate repeats count words; ``text``: see :class:`DecoderText`.
    """
    config = config or GenerationConfig()
    steps = min(max_length if max_length is not None else config.max_length, decoder.max_length - 1)
    memory_ids = None if text is None else text.ids
    document = None if text is None else text.document
    rows = memory.shape[0] * max(config.num_beams, 1)
    if document is not None and config.num_beams > 1:
        document = document.repeat_interleave(config.num_beams, 0)
    constraints = Constraints.of(config, words, document, rows)
    if config.num_beams > 1:
        return beam_search(decoder, memory, memory_valid, config, steps, use_cache, memory_ids, constraints)
    return sample(decoder, memory, memory_valid, config, steps, use_cache, memory_ids, constraints)


@dataclass
class Constraints:
    """What a decoded batch's rows may write besides the decoder's choice: whole words (mmtl.models.words),
    per row how often its document repeats each n-gram (no-repeat n-grams allow that many) and the runs it
    writes twice in a row, and where words end (the unit of immediate repeats)."""

    words: WholeWords | None = None
    allowance: list[Counter] | None = None
    repeats: list[set[tuple[int, ...]]] | None = None
    ends_word: list[bool] | None = None

    @classmethod
    def of(cls, config: GenerationConfig, table: WordTable | None, document: torch.Tensor | None,
           rows: int) -> "Constraints":
        """The constraints of ``rows`` rows whose documents are ``document`` (each row's text ids once);
        ``table``: the vocabulary's word table (whole words apply only with ``config.whole_words``)."""
        allowance = repeats = None
        ends_word = None if table is None else table.ends_word.tolist()
        if config.repeat_document_ngrams and document is not None:
            if config.no_repeat_ngram_size > 0:
                allowance = document_ngrams(document.tolist(), config.no_repeat_ngram_size)
            if config.no_immediate_repeat_size > 0:
                repeats = document_immediate_repeats(document.tolist(), config.no_immediate_repeat_size, ends_word)
        words = WholeWords(table, document, rows) if table is not None and config.whole_words else None
        return cls(words, allowance, repeats, ends_word)


def next_token_logits(session: DecodingSession, ids: torch.Tensor, config: GenerationConfig,
                      constraints: Constraints, last: bool) -> torch.Tensor:
    """Processed logits (N, V) of the token after ``ids`` (N, t, BOS first): repetition rules, minimum
    length, then the whole-word rules (``last``: the final token the decoder may write)."""
    raw = session.logits(ids).float()
    logits = process_logits(raw, ids[:, 1:], config, config.min_length, constraints.allowance, constraints.repeats,
                            constraints.ends_word)
    if constraints.words is None:
        return logits
    without_ngram_rule = replace(config, no_repeat_ngram_size=0, no_immediate_repeat_size=0)
    return constraints.words.apply(logits, ids[:, 1:], last,
                                   lambda: process_logits(raw, ids[:, 1:], without_ngram_rule, config.min_length))


@torch.no_grad()
def sample(decoder: nn.Module, memory: torch.Tensor, memory_valid: torch.Tensor, config: GenerationConfig,
           steps: int, use_cache: bool = True, memory_ids: torch.Tensor | None = None,
           constraints: Constraints | None = None) -> torch.Tensor:
    """Greedy decoding, or sampling (``do_sample``) with temperature, top-k and top-p from a seeded generator."""
    batch = memory.shape[0]
    session = DecodingSession(decoder, memory, memory_valid, use_cache, memory_ids)
    constraints = constraints or Constraints()
    ids = torch.full((batch, 1), BOS, dtype=torch.long, device=memory.device)
    done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=memory.device).manual_seed(config.seed)
    for step in range(steps):
        logits = next_token_logits(session, ids, config, constraints, step == steps - 1)
        if generator is None:
            next_id = logits.argmax(-1)
        else:
            logits = filter_top_k_top_p(logits / config.temperature, config.top_k, config.top_p)
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        next_id = torch.where(done, torch.full_like(next_id, PAD), next_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        done |= next_id == EOS
        if bool(done.all()):
            break
    return ids[:, 1:]


class _Hypotheses:
    """The best ``size`` finished hypotheses of one sample, scored by sum log-prob / length ** penalty."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size, self.length_penalty = size, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def score(self, logprob: float, length: int) -> float:
        return logprob / (max(length, 1) ** self.length_penalty)

    def add(self, logprob: float, tokens: list[int]) -> None:
        if logprob == float("-inf"):
            return
        self.items.append((self.score(logprob, len(tokens)), tokens))
        self.items.sort(key=lambda item: item[0], reverse=True)
        del self.items[self.size :]

    def is_done(self, best_alive_logprob: float, length: int) -> bool:
        """Full, and no alive beam can beat the worst kept one (the usual non-exhaustive criterion)."""
        return len(self.items) == self.size and self.items[-1][0] >= self.score(best_alive_logprob, length)

    def best(self) -> list[int]:
        return self.items[0][1]


@torch.no_grad()
def beam_search(decoder: nn.Module, memory: torch.Tensor, memory_valid: torch.Tensor, config: GenerationConfig,
                steps: int, use_cache: bool = True, memory_ids: torch.Tensor | None = None,
                constraints: Constraints | None = None) -> torch.Tensor:
    """Batched beam search with length penalty; the KV cache follows the surviving beams.

    ``constraints`` hold one row per beam (see :func:`generate`).

    Each step ranks the 2K best continuations of a sample's K beams: EOS among the top K
    finishes a hypothesis, the best K others continue. A sample stops once K hypotheses are
    finished and no alive beam can beat them; the highest-scoring finished one is returned.
    """
    batch, beams = memory.shape[0], config.num_beams
    device = memory.device
    memory, memory_valid = memory.repeat_interleave(beams, 0), memory_valid.repeat_interleave(beams, 0)
    if memory_ids is not None:
        memory_ids = memory_ids.repeat_interleave(beams, 0)
    session = DecodingSession(decoder, memory, memory_valid, use_cache, memory_ids)
    constraints = constraints or Constraints()
    ids = torch.full((batch * beams, 1), BOS, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    scores = scores.view(-1)
    finished = [_Hypotheses(beams, config.length_penalty) for _ in range(batch)]
    done = [False] * batch
    for step in range(steps):
        logits = next_token_logits(session, ids, config, constraints, step == steps - 1)
        candidates = (scores[:, None] + F.log_softmax(logits, -1)).view(batch, -1)
        vocab = logits.shape[-1]
        top_scores, top_index = candidates.topk(min(2 * beams, candidates.shape[1]), dim=1)
        ranked = [list(zip(origins, tokens, values)) for origins, tokens, values in zip(
            (top_index // vocab).tolist(), (top_index % vocab).tolist(), top_scores.tolist())]
        new_origin, new_token, new_score = _next_beams(ranked, ids[:, 1:].tolist(), finished, done, step)
        index = (torch.arange(batch, device=device)[:, None] * beams + torch.tensor(new_origin, device=device)).view(-1)
        ids = torch.cat([ids.index_select(0, index), torch.tensor(new_token, device=device).view(-1, 1)], dim=1)
        scores = torch.tensor(new_score, device=device).view(-1)
        session.reorder(index)
        if all(done):
            break
    return _best_sequences(ids, scores, finished, done)


def _next_beams(ranked: list[list[tuple[int, int, float]]], generated: list[list[int]], finished: list["_Hypotheses"],
                done: list[bool], step: int) -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    """One beam-search step's choice per sample from its ranked (origin beam, token, score) continuations:
    EOS among the top K finishes a hypothesis (in ``finished``), the best K others continue. Updates
    ``done``; returns the surviving beams' origins, tokens and scores, each (batch, K)."""
    beams = finished[0].size
    new_origin = [[0] * beams for _ in ranked]
    new_token = [[PAD] * beams for _ in ranked]
    new_score = [[float("-inf")] * beams for _ in ranked]
    for b, candidates in enumerate(ranked):
        if done[b]:
            new_origin[b] = list(range(beams))
            continue
        slot = 0
        for rank, (o, t, s) in enumerate(candidates):
            if t == EOS:
                if rank < beams:
                    finished[b].add(s, generated[b * beams + o] + [EOS])
                continue
            new_origin[b][slot], new_token[b][slot], new_score[b][slot] = o, t, s
            slot += 1
            if slot == beams:
                break
        done[b] = finished[b].is_done(max(new_score[b]), step + 1)
    return new_origin, new_token, new_score


def _best_sequences(ids: torch.Tensor, scores: torch.Tensor, finished: list["_Hypotheses"],
                    done: list[bool]) -> torch.Tensor:
    """(batch, T) PAD-padded best hypothesis of each sample (without BOS); a sample that ran out of steps
    lets its alive beams (``ids``, ``scores``) compete with its finished hypotheses."""
    beams = finished[0].size
    generated, alive_scores = ids[:, 1:].tolist(), scores.tolist()
    outputs = []
    for b, hypotheses in enumerate(finished):
        if not done[b]:
            for k in range(beams):
                hypotheses.add(alive_scores[b * beams + k], generated[b * beams + k])
        outputs.append(hypotheses.best() if hypotheses.items else generated[b * beams])
    width = max(1, max(len(o) for o in outputs))
    result = torch.full((len(outputs), width), PAD, dtype=torch.long, device=ids.device)
    for b, tokens in enumerate(outputs):
        result[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=ids.device)
    return result


def sequence_logprob(decoder: nn.Module, memory: torch.Tensor, memory_valid: torch.Tensor,
                     tokens: torch.Tensor, memory_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of log-probabilities (B,) the decoder gives ``tokens`` (B, T, no BOS), up to each row's EOS."""
    ids = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens], dim=1)
    logp = F.log_softmax(decoder(ids[:, :-1], memory, memory_valid, **copy_from(memory_ids)).float(), -1)
    picked = logp.gather(2, tokens[..., None])[..., 0]
    ended_before = torch.cumsum((tokens == EOS).long(), 1) - (tokens == EOS).long() > 0
    keep = (tokens != PAD) & ~ended_before
    return (picked * keep).sum(1)

