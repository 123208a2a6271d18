"""Which task each batch of a multi-task epoch comes from.

An epoch has as many batches as the tasks' batches together. proportional: every task's batches once, in a
shuffled order (large tasks dominate); temperature: task t's share of the epoch is n_t^(1/T) / sum n^(1/T)
(MT-DNN, T5: small tasks repeated, large ones cut short); round_robin: equal shares, taken in turn. Shares
become counts by largest remainder (every task at least one batch), so an epoch's make-up is fixed and only its
order is drawn, from (seed, epoch): a resumed run and every rank see the same schedule.
"""
from __future__ import annotations

import random

SAMPLINGS = ("proportional", "temperature", "round_robin")


def epoch_counts(batches: list[int], sampling: str, temperature: float = 1.0) -> list[int]:
    """Batches each task contributes to one epoch of sum(batches) batches."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling '{sampling}', expected one of {SAMPLINGS}")
    total = sum(batches)
    if sampling == "proportional":
        return list(batches)
    weights = [1.0] * len(batches) if sampling == "round_robin" else [n ** (1.0 / temperature) for n in batches]
    exact = [total * w / sum(weights) for w in weights]
    counts = [max(1, int(x)) for x in exact]
    while sum(counts) < total:  # largest remainder first
        i = max(range(len(counts)), key=lambda t: exact[t] - counts[t])
        counts[i] += 1
    while sum(counts) > total:  # (only when a minimum of 1 overshot)
        i = max(range(len(counts)), key=lambda t: counts[t] - exact[t])
        counts[i] -= 1
    return counts


def schedule(counts: list[int], sampling: str, seed: str) -> list[int]:
    """The task of each batch of the epoch."""
    if sampling == "round_robin":
        left, order = list(counts), []
        while any(left):
            for t in range(len(left)):
                if left[t]:
                    order.append(t)
                    left[t] -= 1
        return order
    order = [t for t, count in enumerate(counts) for _ in range(count)]
    random.Random(seed).shuffle(order)
    return order


def take_batches(one_pass, count: int) -> list[list[int]]:
    """count batches from passes one_pass(0), one_pass(1), ... over a task's data (each pass reshuffled)."""
    taken: list[list[int]] = []
    p = 0
    while len(taken) < count:
        batches = one_pass(p)
        if not batches:
            raise ValueError("a task has no batch to give")
        taken += batches[:count - len(taken)]
        p += 1
    return taken
