"""Metric functions, computed with torchmetrics, sacrebleu and rouge-score rather than by hand."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


def multilabel_scores(predicted: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                      classes: Sequence[str]) -> dict[str, float]:
    """Micro F1, macro F1 and exact-set accuracy of predicted tag sets against reference tag sets."""
    from torchmetrics.functional.classification import multilabel_f1_score

    index = {name: i for i, name in enumerate(classes)}

    def multi_hot(sets: Sequence[Sequence[str]]) -> torch.Tensor:
        out = torch.zeros(len(sets), len(classes), dtype=torch.long)
        for row, labels in enumerate(sets):
            for label in labels:
                if label in index:
                    out[row, index[label]] = 1
        return out

    pred, ref = multi_hot(predicted), multi_hot(references)
    n = len(classes)
    return {
        "f1_micro": float(multilabel_f1_score(pred, ref, num_labels=n, average="micro")),
        "f1_macro": float(multilabel_f1_score(pred, ref, num_labels=n, average="macro")),
        "exact_match": float((pred == ref).all(1).float().mean()) if len(pred) else 0.0,
    }


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


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-100), the best over each hypothesis's references."""
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hypothesis, refs in zip(hypotheses, references):
        scores = _rouge_scorer().score_multi(list(refs), hypothesis)
        for name in totals:
            totals[name] += scores[name].fmeasure
    count = max(len(hypotheses), 1)
    return {name: 100.0 * value / count for name, value in totals.items()}
