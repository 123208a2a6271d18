"""Score a span-prediction model on question windows: logits per window, spans back to text, SQuAD EM/F1."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tlscale.data.batching import attention_mask, no_grad, pad
from tlscale.data.qa import Question
from tlscale.data.qa_windows import Windows
from tlscale.eval.qa_answers import best_answers
from tlscale.eval.squad import squad_scores

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


def collate_windows(windows: Windows, indices: list[int], pad_id: int, labels: bool = True) -> dict:
    """Right-padded batch of windows; `index` says which windows they are (for gathering)."""
    import torch

    rows = [windows.input_ids[i] for i in indices]
    batch = {"input_ids": pad(rows, pad_id), "attention_mask": attention_mask(rows),
             "token_type_ids": pad([windows.token_type_ids[i] for i in indices], 0), "index": torch.tensor(indices)}
    if labels:
        batch["start_positions"] = torch.tensor([windows.start_positions[i] for i in indices])
        batch["end_positions"] = torch.tensor([windows.end_positions[i] for i in indices])
    return batch


@no_grad
def window_logits(model, windows: Windows, indices: list[int], pad_id: int, batch_size: int, device,
                  accepts_token_types: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """window index -> (start logits, end logits), unpadded, on the CPU."""
    was_training = model.training
    model.eval()
    result = {}
    for first in range(0, len(indices), batch_size):
        chunk = indices[first:first + batch_size]
        batch = collate_windows(windows, chunk, pad_id, labels=False)
        batch.pop("index")
        if not accepts_token_types:
            batch.pop("token_type_ids")
        out = model(**{k: v.to(device) for k, v in batch.items()})
        for row, i in enumerate(chunk):
            n = len(windows.input_ids[i])
            result[i] = (out.start_logits[row, :n].float().cpu(), out.end_logits[row, :n].float().cpu())
    model.train(was_training)
    return result


def qa_metrics(questions: list[Question], windows: Windows, logits: dict[int, tuple[torch.Tensor, torch.Tensor]],
               version: str = "v1", n_best: int = 20, max_answer_tokens: int = 30,
               null_threshold: float | None = None) -> tuple[dict, dict[str, str]]:
    """(SQuAD scores, predicted answer per question id) from every window's logits."""
    order = range(len(windows))
    answers = best_answers(questions, windows, [logits[i][0] for i in order], [logits[i][1] for i in order],
                           n_best=n_best, max_answer_tokens=max_answer_tokens,
                           null_threshold=null_threshold if version == "v2" else None)
    return squad_scores(answers, {q.id: q.answers for q in questions}, version), answers
