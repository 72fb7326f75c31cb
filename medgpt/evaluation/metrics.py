"""Pure answer-quality metrics: exact match, token F1 and ROUGE-L, with Chinese scored character by character.

English words are tokens; every CJK character is its own token (Chinese has no spaces, and whitespace
tokenisers either drop it or treat a whole sentence as one word). Punctuation is ignored; EM and F1 also ignore
English articles (SQuAD's normalisation).

    python -c "from medgpt.evaluation.metrics import rouge_l; print(rouge_l('高血糖', '高血压'))"
"""
from __future__ import annotations

import re
from collections import Counter
from typing import List

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(f"[{CJK}]|[^\\W{CJK}]+")  # one CJK character, or a run of other word characters
ARTICLES = {"a", "an", "the"}


def tokens(text: str, drop_articles: bool = False) -> List[str]:
    found = TOKEN.findall(text.lower())
    return [t for t in found if t not in ARTICLES] if drop_articles else found


def exact_match(prediction: str, reference: str) -> float:
    return float(tokens(prediction, True) == tokens(reference, True))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction, True), tokens(reference, True)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


class _Tokenizer:
    """rouge-score's tokenizer interface; its default one keeps only [a-z0-9] and so deletes Chinese."""

    def tokenize(self, text: str) -> List[str]:
        return tokens(text)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), computed by rouge-score."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Tokenizer()).score(reference, prediction)["rougeL"].fmeasure


def has_cjk(text: str) -> bool:
    return re.search(f"[{CJK}]", text) is not None
