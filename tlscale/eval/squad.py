"""Exact match and F1 exactly as the official SQuAD evaluation scripts compute them.

v1.1: lowercase, strip punctuation, drop the articles a/an/the, collapse whitespace; EM and token F1 (over
whitespace tokens) take the best gold answer. v2.0 adds unanswerable questions: their gold is the empty
answer, an empty prediction matches it (F1 1 when both are empty), and HasAns/NoAns splits are reported.
torchmetrics' SQuAD implements v1.1 only; a test cross-checks the two on v1.1 cases.
"""
from __future__ import annotations

import re
import string
from collections import Counter

PUNCTUATION = set(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, version: str = "v1") -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == "v2" and (not predicted or not expected):
        return float(predicted == expected)  # v2: no-answer vs no-answer is a match
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: list[str]) -> float:
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]], version: str = "v1") -> dict:
    """predictions: id -> text; golds: id -> gold answer texts ([] or [''] for unanswerable, v2).
    Scores are percentages, as the official scripts print them."""
    if version not in ("v1", "v2"):
        raise ValueError(f"version: expected 'v1' or 'v2', found '{version}'")
    missing = sorted(set(golds) - set(predictions))
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction, e.g. {missing[:3]}")
    em, f1s, has_answer = {}, {}, {}
    for qid, answers in golds.items():
        answers = [a for a in answers if normalize_answer(a)] if version == "v2" else list(answers)
        has_answer[qid] = bool(answers)
        answers = answers or [""]
        em[qid] = best_over_golds(exact_match, predictions[qid], answers)
        f1s[qid] = best_over_golds(lambda p, g: f1(p, g, version), predictions[qid], answers)
    result = {"exact_match": _mean(em.values()), "f1": _mean(f1s.values()), "total": len(golds)}
    if version == "v2":
        for name, keep in (("HasAns", True), ("NoAns", False)):
            ids = [qid for qid, has in has_answer.items() if has == keep]
            result[f"{name}_exact"] = _mean(em[q] for q in ids) if ids else None
            result[f"{name}_f1"] = _mean(f1s[q] for q in ids) if ids else None
            result[f"{name}_total"] = len(ids)
    return result


def _mean(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0
