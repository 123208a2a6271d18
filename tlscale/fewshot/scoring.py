"""Log-likelihood of answer choices given a prompt, for rank classification.

Shared-prefix scoring puts one prompt and all of its choices in a single sequence: the prompt tokens see
the usual causal mask, each choice's tokens see the whole prompt and the earlier tokens of their own
choice only, and every choice's positions continue from the prompt's end (a 4D attention mask and explicit
position ids, as in packed training). So the prompt, the long part, is computed once per example rather
than once per (example, choice), and each choice's log-probabilities are those of prompt + choice alone
(tested against naive per-choice scoring). Batches are sorted by length to waste little on padding.

Two more savings, both exact: when every choice is one token (the usual verbalizer), the choices need no
positions at all, only the distribution after the prompt (left-padded, so every row ends at the last column);
and the vocabulary projection, a third of a GPT-2-small forward, runs only at the positions that predict a
choice token (transformers' logits_to_keep), not at every prompt token.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from tlscale.data.batching import attention_mask, pad


@dataclass
class ChoiceScores:
    logprob: torch.Tensor  # [examples, choices]: summed log-probability of each choice's tokens
    tokens: torch.Tensor  # [examples, choices]: how many tokens each choice has

    def mean(self) -> torch.Tensor:
        return self.logprob / self.tokens.clamp_min(1)


def tokenize_choices(tokenizer, choices: list[str]) -> list[list[int]]:
    from tlscale.errors import ConfigError

    ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    empty = [c for c, i in zip(choices, ids) if not i]
    if empty:
        raise ConfigError(f"fewshot.verbalizer: {empty} tokenize to nothing")
    return ids


@torch.no_grad()
def shared_prefix_scores(model, prompts: list[list[int]], choices: list[list[int]], batch_size: int = 8,
                         pad_id: int = 0) -> ChoiceScores:
    """prompts: token ids per example; choices: token ids per choice (the same choices for every example)."""
    if all(len(choice) == 1 for choice in choices):
        return _next_token_scores(model, prompts, choices, batch_size, pad_id)
    device = next(model.parameters()).device
    offsets, total = [], 0
    for choice in choices:
        offsets.append(total)
        total += len(choice)
    logprob = torch.zeros(len(prompts), len(choices))
    for batch in _length_sorted_batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in batch) + total
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        segment = torch.full((len(batch), width), -1, dtype=torch.long)  # 0 prompt, j+1 choice j, -1 padding
        for row, i in enumerate(batch):
            n = len(prompts[i])
            ids[row, :n] = torch.tensor(prompts[i])
            positions[row, :n] = torch.arange(n)
            segment[row, :n] = 0
            for j, choice in enumerate(choices):
                start = n + offsets[j]
                ids[row, start:start + len(choice)] = torch.tensor(choice)
                positions[row, start:start + len(choice)] = torch.arange(n, n + len(choice))
                segment[row, start:start + len(choice)] = j + 1
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        query, key = segment[:, :, None], segment[:, None, :]
        allowed = causal & (key >= 0) & ((key == 0) | (key == query))
        allowed |= torch.eye(width, dtype=torch.bool)  # padding positions attend to themselves (no NaNs)
        # token t of choice j is predicted at the position before it: the prompt's last for t = 0
        wheres = {(row, j): [len(prompts[i]) - 1] + [len(prompts[i]) + offsets[j] + t for t in range(len(choice) - 1)]
                  for row, i in enumerate(batch) for j, choice in enumerate(choices)}
        kept = sorted({position for where in wheres.values() for position in where})
        column = {position: c for c, position in enumerate(kept)}
        logits = model(input_ids=ids.to(device), attention_mask=allowed[:, None].to(device),
                       position_ids=positions.to(device), **_logits_at(model, torch.tensor(kept, device=device))).logits
        if logits.shape[1] != len(kept):  # a model without logits_to_keep returned every position
            column = {position: position for position in kept}
        for row, i in enumerate(batch):
            for j, choice in enumerate(choices):
                logprob[i, j] = _choice_logprob(logits[row, [column[p] for p in wheres[row, j]]], choice)
    return ChoiceScores(logprob, _token_counts(len(prompts), choices))


def _next_token_scores(model, prompts: list[list[int]], choices: list[list[int]], batch_size: int,
                       pad_id: int) -> ChoiceScores:
    """One-token choices: one forward of the prompt alone, the vocabulary projection at its last token only."""
    device = next(model.parameters()).device
    tokens = torch.tensor([choice[0] for choice in choices], device=device)
    logprob = torch.zeros(len(prompts), len(choices))
    for batch in _length_sorted_batches([len(p) for p in prompts], batch_size):
        rows = [prompts[i] for i in batch]
        ids, mask = pad(rows, pad_id, left=True), attention_mask(rows, left=True)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       **_logits_at(model, 1)).logits[:, -1]
        logprob[batch] = torch.log_softmax(logits.float(), dim=-1)[:, tokens].cpu()
    return ChoiceScores(logprob, _token_counts(len(prompts), choices))


def _logits_at(model, keep) -> dict:
    """logits_to_keep where the model takes it (transformers' causal LMs do): an int keeps the last positions,
    a tensor those positions."""
    return {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def naive_scores(model, prompts: list[list[int]], choices: list[list[int]], batch_size: int = 8,
                 pad_id: int = 0) -> ChoiceScores:
    """One forward per (example, choice) on prompt + choice: the reference, and the bench's baseline."""
    device = next(model.parameters()).device
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(choices))]
    lengths = [len(prompts[i]) + len(choices[j]) for i, j in pairs]
    logprob = torch.zeros(len(prompts), len(choices))
    for batch in _length_sorted_batches(lengths, batch_size):
        sequences = [prompts[pairs[p][0]] + choices[pairs[p][1]] for p in batch]
        ids, mask = pad(sequences, pad_id), attention_mask(sequences)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, p in enumerate(batch):
            i, j = pairs[p]
            n, choice = len(prompts[i]), choices[j]
            logprob[i, j] = _choice_logprob(logits[row, n - 1:n - 1 + len(choice)], choice)
    return ChoiceScores(logprob, _token_counts(len(prompts), choices))


def _choice_logprob(logits: torch.Tensor, choice: list[int]) -> float:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.arange(len(choice), device=logits.device)
    return logprobs[index, torch.tensor(choice, device=logits.device)].sum().item()


def _token_counts(n: int, choices: list[list[int]]) -> torch.Tensor:
    return torch.tensor([len(c) for c in choices], dtype=torch.float).expand(n, -1).clone()


def _length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def label_log_scores(scores: ChoiceScores, words_per_label: list[int], how: str = "sum") -> torch.Tensor:
    """[examples, labels]: a label's words' probabilities add up (logsumexp over its choices).
    how: 'sum' uses each choice's total log-probability, 'mean' its per-token mean (length-normalised)."""
    values = scores.logprob if how == "sum" else scores.mean()
    columns, start = [], 0
    for count in words_per_label:
        columns.append(torch.logsumexp(values[:, start:start + count], dim=1))
        start += count
    return torch.stack(columns, dim=1)
