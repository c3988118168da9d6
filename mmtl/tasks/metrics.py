"""The tasks' metric functions, computed with torchmetrics, sacrebleu, rouge-score and pycocoevalcap rather
than by hand."""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Sequence

import torch


def _multi_hot(sets: Sequence[Sequence[str]], classes: Sequence[str]) -> torch.Tensor:
    """(samples, classes) 0/1 matrix of label-name sets; names outside ``classes`` are ignored."""
    index = {name: i for i, name in enumerate(classes)}
    out = torch.zeros(len(sets), len(classes), dtype=torch.long)
    for row, labels in enumerate(sets):
        for label in labels:
            if label in index:
                out[row, index[label]] = 1
    return out


def multilabel_scores(predicted: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                      classes: Sequence[str]) -> dict[str, float]:
    """Micro F1, macro F1 and exact-set accuracy of predicted tag sets against reference tag sets."""
    from torchmetrics.functional.classification import multilabel_f1_score

    pred, ref = _multi_hot(predicted, classes), _multi_hot(references, classes)
    n = len(classes)
    return {
        "f1_micro": float(multilabel_f1_score(pred, ref, num_labels=n, average="micro")),
        "f1_macro": float(multilabel_f1_score(pred, ref, num_labels=n, average="macro")),
        "exact_match": float((pred == ref).all(1).float().mean()) if len(pred) else 0.0,
    }


def multilabel_average_precision(scored: Sequence[Sequence[tuple[str, float]]], references: Sequence[Sequence[str]],
                                 classes: Sequence[str]) -> dict[str, float]:
    """Mean average precision over classes (torchmetrics, macro) of per-class scores against reference sets.

    ``scored`` holds each sample's (class, score) pairs; a class a sample does not list scores 0.
    Classes with no positive reference are left out of the mean (their precision is undefined).
    """
    from torchmetrics.functional.classification import multilabel_average_precision as average_precision

    index = {name: i for i, name in enumerate(classes)}
    scores = torch.zeros(len(scored), len(classes))
    for row, pairs in enumerate(scored):
        for name, value in pairs:
            if name in index:
                scores[row, index[name]] = float(value)
    target = _multi_hot(references, classes)
    present = target.sum(0) > 0
    if not len(scored) or not present.any():
        return {"mAP": 0.0}
    per_class = average_precision(scores[:, present], target[:, present], num_labels=int(present.sum()), average="none")
    return {"mAP": float(per_class.mean())}


def _cider_tokens(text: str) -> str:
    # the COCO toolkit's PTB tokenizer needs Java; lower-cased word tokens without punctuation match it
    # on plain captions
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus CIDEr-D (pycocoevalcap; x100, as captioning papers report it) with any number of references."""
    from pycocoevalcap.cider.cider import Cider

    if not hypotheses:
        return {"cider": 0.0}
    gts = {i: [_cider_tokens(r) for r in refs] or [""] for i, refs in enumerate(references)}
    res = {i: [_cider_tokens(h)] for i, h in enumerate(hypotheses)}
    score, _ = Cider().compute_score(gts, res)
    return {"cider": 100.0 * float(score)}


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 (sacrebleu, 0-100) with any number of references per hypothesis."""
    import sacrebleu

    width = max((len(r) for r in references), default=1)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    return {"bleu4": float(sacrebleu.corpus_bleu(list(hypotheses), streams, force=True).score)}


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge_f(hypothesis: str, references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (0-1) of one text, the best over its references (as :func:`rouge` scores it)."""
    return {name: score.fmeasure for name, score in _rouge_scorer().score_multi(list(references), hypothesis).items()}


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-100), the best over each hypothesis's references."""
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hypothesis, refs in zip(hypotheses, references):
        scores = _rouge_scorer().score_multi(list(refs), hypothesis)
        for name in totals:
            totals[name] += scores[name].fmeasure
    count = max(len(hypotheses), 1)
    return {name: 100.0 * value / count for name, value in totals.items()}


_WORD = re.compile(r"\w+|[^\w\s]")


def _words(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters/digits/underscore, and each other non-space character."""
    return _WORD.findall(text.lower())


def diversity(hypotheses: Sequence[str]) -> dict[str, float]:
    """Degeneration of generated texts, in percent: ``distinct2``, ``repetition`` and ``unique_outputs``.

    Texts are split into lower-cased word tokens (runs of letters, digits or ``_``; every other
    non-space character is a token of its own).
    - ``distinct2`` (Li et al., 2016): distinct bigrams over all bigrams of the whole corpus
      (bigrams never span two texts); 0 when no text has two tokens. Higher is more diverse.
    - ``repetition``: the share of tokens that repeat an earlier token of the same text, over all
      tokens ("a a a a" -> 3 of 4 = 75); 0 for empty output. Lower is less degenerate; fluent
      summaries repeat function words, so it is rarely 0. A constant short output ("a table .")
      scores 0: read it with the other two.
    - ``unique_outputs``: distinct texts over all texts (one caption for every image: 100 / n).
    """
    bigrams: list[tuple[str, str]] = []
    tokens = repeated = 0
    for text in hypotheses:
        words = _words(text)
        bigrams.extend(zip(words, words[1:]))
        tokens += len(words)
        repeated += len(words) - len(set(words))
    return {"distinct2": 100.0 * len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
            "repetition": 100.0 * repeated / tokens if tokens else 0.0,
            "unique_outputs": 100.0 * len(set(hypotheses)) / len(hypotheses) if hypotheses else 0.0}


def top_opening(hypotheses: Sequence[str], words: int = 4) -> dict[str, float]:
    """``top_opening``: the share (percent) of texts that open with the most common opening of ``words``
    word tokens (as :func:`diversity` splits them; a shorter text is its own opening). A model that
    starts most outputs with one stock phrase ("the proposed model outperforms") scores high. 0 for no texts."""
    if not hypotheses:
        return {"top_opening": 0.0}
    counts = Counter(tuple(_words(text)[:words]) for text in hypotheses)
    return {"top_opening": 100.0 * counts.most_common(1)[0][1] / len(hypotheses)}
