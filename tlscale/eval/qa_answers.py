"""From start/end logits over windows back to one answer text per question.

For each question: the n-best start and end positions of every window, pairs that lie inside the
context with end >= start and at most max_answer_tokens long, scored start + end; the best pair's
characters are cut from the original context. SQuAD v2: the null score (CLS start + end, best over the
windows) wins when it beats the best span by more than null_threshold, and the answer is "".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tlscale.data.qa import Question
from tlscale.data.qa_windows import Windows

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


def best_answers(questions: list[Question], windows: Windows, start_logits: list[torch.Tensor],
                 end_logits: list[torch.Tensor], n_best: int = 20, max_answer_tokens: int = 30,
                 null_threshold: float | None = None) -> dict[str, str]:
    """start_logits[i], end_logits[i]: 1-D logits of window i (its own length, no padding)."""
    import torch

    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, q in enumerate(windows.question_index):
        offsets = windows.offsets[w]
        starts, ends = start_logits[w].float(), end_logits[w].float()
        null[q] = min(null.get(q, float("inf")), (starts[0] + ends[0]).item())
        top_starts = torch.topk(starts, min(n_best, len(starts))).indices.tolist()
        top_ends = torch.topk(ends, min(n_best, len(ends))).indices.tolist()
        for s in top_starts:
            for e in top_ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = (starts[s] + ends[e]).item()
                if q not in best or score > best[q][0]:
                    best[q] = (score, questions[q].context[offsets[s][0]:offsets[e][1]])
    answers = {}
    for q, question in enumerate(questions):
        score, text = best.get(q, (float("-inf"), ""))
        if null_threshold is not None and null.get(q, float("-inf")) - score > null_threshold:
            text = ""
        answers[question.id] = text
    return answers
