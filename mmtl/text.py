"""Text <-> token ids: open_clip's BPE tokenizer (shipped inside its package) plus a vocabulary.

The model embeds *vocabulary ids*. A vocabulary is either the full open_clip BPE table or a
compact subset of BPE ids seen in the training data, which makes tiny models fast on a CPU
without changing how text is split into tokens.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
FULL_BPE_SIZE = 49408


@lru_cache(maxsize=1)
def bpe_tokenizer():
    """The open_clip BPE tokenizer (loads its vocabulary file from the installed package, offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def bpe_encode(text: str) -> list[int]:
    """BPE ids of ``text`` without start/end tokens."""
    return bpe_tokenizer().encode(text)


def bpe_encode_words(text: str) -> list[list[int]]:
    """BPE ids of ``text`` word by word (:func:`text_words`); concatenated, they are :func:`bpe_encode`'s."""
    return _bpe_of_words(text_words(text))


def _bpe_of_words(words: list[str]) -> list[list[int]]:
    """BPE ids of each of the tokenizer's ``words``."""
    tokenizer = bpe_tokenizer()
    out = []
    for word in words:
        word = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
        out.append([tokenizer.encoder[token] for token in tokenizer.bpe(word).split(" ")])
    return out


class Vocabulary:
    """Maps open_clip BPE ids to the model's embedding rows (special tokens first).

    ``word_initial`` (BPE ids), when known, are the tokens that begin some word of the texts the
    vocabulary was built from: a decoder that starts a word with any other token writes a piece of a word
    (mmtl.models.words). Vocabularies of older checkpoints do not know them (None).

    ``joined_words`` are the words (between spaces, as :func:`text_words` cleans them) of those texts that
    the tokenizer splits into several pieces ("#person1#" -> "#" "person" "1" "#"; "2017." -> "2" "0" "1"
    "7" "."). BPE ids do not say whether a space stood between two pieces, so :meth:`decode` joins
    pieces that together spell one of these words and puts a space between all others. Empty for older
    checkpoints, whose text decodes as before.
    """

    def __init__(self, bpe_ids: Sequence[int] | None = None, word_initial: Iterable[int] | None = None,
                 joined_words: Iterable[str] = ()) -> None:
        """``bpe_ids=None`` means the full BPE table; otherwise only these ids get their own row."""
        self.bpe_ids = None if bpe_ids is None else [int(i) for i in bpe_ids]
        self._to_local = None if self.bpe_ids is None else {b: i + len(SPECIAL_TOKENS) for i, b in enumerate(self.bpe_ids)}
        self.word_initial = None if word_initial is None else sorted({int(i) for i in word_initial})
        self.joined_words = frozenset(joined_words)
        # the words are clean already: the tokenizer's pattern alone splits them (its clean-up costs ~1 ms a word)
        pattern = bpe_tokenizer().pat
        self._longest_join = max((len(pattern.findall(w)) for w in self.joined_words), default=0)

    @property
    def size(self) -> int:
        """Number of embedding rows the model needs."""
        n = FULL_BPE_SIZE if self.bpe_ids is None else len(self.bpe_ids)
        return n + len(SPECIAL_TOKENS)

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Compact vocabulary of every BPE id that occurs at least ``min_count`` times in ``texts``, with the
        ids that begin a word of them (``word_initial``) and their words of several pieces (``joined_words``).

        BPE never merges across the tokenizer's words (:func:`text_words`), so encoding each distinct word
        once gives the same ids as encoding every text, at a fraction of the cost on large corpora.
        """
        words: Counter[str] = Counter()
        for text in texts:
            words.update(text.split())
        counts: Counter[int] = Counter()
        initial: set[int] = set()
        joined: set[str] = set()
        for word, count in words.items():
            pieces = text_words(word)
            if len(pieces) > 1:
                joined.add("".join(pieces))
            for ids in _bpe_of_words(pieces):
                initial.update(ids[:1])
                for bpe_id in ids:
                    counts[bpe_id] += count
        kept = sorted(b for b, c in counts.items() if c >= min_count)
        return cls(kept, initial.intersection(kept), joined)

    def bpe_of(self, vocab_id: int) -> int | None:
        """The BPE id behind vocabulary id ``vocab_id`` (None for special tokens)."""
        if vocab_id < len(SPECIAL_TOKENS):
            return None
        local = vocab_id - len(SPECIAL_TOKENS)
        return local if self.bpe_ids is None else self.bpe_ids[local]

    def encode(self, text: str, max_length: int, bos: bool = False, eos: bool = False) -> list[int]:
        """Vocabulary ids of ``text``, truncated so that the result (with bos/eos) fits ``max_length``."""
        budget = max_length - int(bos) - int(eos)
        bpe = bpe_encode(text)[: max(budget, 0)]
        if self._to_local is None:
            ids = [b + len(SPECIAL_TOKENS) for b in bpe]
        else:
            ids = [self._to_local.get(b, UNK) for b in bpe]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of vocabulary ids; stops at EOS, skips other special tokens."""
        bpe = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIAL_TOKENS):
                bpe.append(self.bpe_of(i))
        text = bpe_tokenizer().decode(bpe).strip()
        return self._join_words(text.split(" ")) if self.joined_words else text

    def _join_words(self, pieces: list[str]) -> str:
        """``pieces`` (the tokenizer's words, in order) with each longest run that spells a joined word
        written without spaces."""
        out: list[str] = []
        start = 0
        while start < len(pieces):
            end = min(len(pieces), start + self._longest_join)
            while end > start + 1 and "".join(pieces[start:end]) not in self.joined_words:
                end -= 1
            out.append("".join(pieces[start:end]))
            start = end
        return " ".join(out)

    def to_dict(self) -> dict:
        """JSON-serialisable form, stored with checkpoints."""
        out = {"kind": "full" if self.bpe_ids is None else "compact", "bpe_ids": self.bpe_ids}
        if self.word_initial is not None:
            out["word_initial"] = self.word_initial
        if self.joined_words:
            out["joined_words"] = sorted(self.joined_words)
        return out

    @staticmethod
    def dict_problem(data: object) -> str | None:
        """What makes ``data`` no :meth:`to_dict` output (None when it is one): a checkpoint's metadata is
        data from someone else, checked before it is used."""
        if not isinstance(data, dict) or data.get("kind") not in ("full", "compact"):
            return "vocab.kind must be 'full' or 'compact'"
        fields = {"bpe_ids": (int, "integers"), "word_initial": (int, "integers"), "joined_words": (str, "strings")}
        required = {"bpe_ids"} if data["kind"] == "compact" else set()
        for key, (kind, kind_name) in fields.items():
            value = data.get(key)
            if value is None and key not in required:
                continue
            if not isinstance(value, list) or not all(type(item) is kind for item in value):
                return f"vocab.{key} must be a list of {kind_name}"
        return None

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        """Inverse of :meth:`to_dict`."""
        return cls(None if data.get("kind") == "full" else data["bpe_ids"], data.get("word_initial"),
                   data.get("joined_words", ()))


def text_words(text: str) -> list[str]:
    """The words the BPE tokenizer splits ``text`` into before merging (its own clean-up and pattern:
    lower-cased letter runs, single digits, punctuation runs, clitics). Decoded text splits into the
    same units, so a generated word and a document word compare equal exactly when they are one word."""
    tokenizer = bpe_tokenizer()
    return tokenizer.pat.findall(tokenizer.clean_fn(text))


def known_words(texts: Iterable[str]) -> set[str]:
    """Every word (:func:`text_words`) of ``texts``: the whole words a model trained on them has seen."""
    words: set[str] = set()
    for text in texts:
        words.update(text_words(text))
    return words


def copied_fragments(output: str, document: str, vocabulary_words: set[str]) -> list[str]:
    """Words of ``output`` that are neither a whole word of ``document`` nor one of ``vocabulary_words``:
    pieces of words (a copied sub-word token such as "tively", or a word glued from pieces of several)."""
    document_words = set(text_words(document))
    return [w for w in text_words(output) if w not in document_words and w not in vocabulary_words]


def count_fragment_outputs(outputs: Sequence[str], documents: Sequence[str], vocabulary_words: set[str]) -> int:
    """How many ``outputs`` contain a word fragment (:func:`copied_fragments`), each against its document
    (an empty document for outputs written from an image alone)."""
    return sum(bool(copied_fragments(o, d, vocabulary_words)) for o, d in zip(outputs, documents))
