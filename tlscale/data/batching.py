"""Tokenized datasets, length-grouped batches and dynamic padding."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tlscale.data.classification import Examples


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(examples: Examples, tokenizer, max_length: int) -> Encoded:
    """Tokenize once untruncated (to count what truncation cuts), then again only the long ones."""
    out = dict(tokenizer(examples.texts, examples.pairs, truncation=False, verbose=False))
    long = [i for i, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
    if long:
        pairs = [examples.pairs[i] for i in long] if examples.pairs is not None else None
        cut = tokenizer([examples.texts[i] for i in long], pairs, truncation=True, max_length=max_length)
        for key in out:
            for position, i in enumerate(long):
                out[key][i] = cut[key][position]
    return Encoded(out["input_ids"], out.get("token_type_ids"), list(examples.labels), len(long))


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, then sort within mega-batches of 50 batches: little padding, still random."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    random.Random(seed + 1).shuffle(batches)
    return batches


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def shard_global_batches(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's part of a global batch. Strided, so length-sorted batches split evenly."""
    return indices[rank::world]


def sequential_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """For evaluation: sorted by length (less padding), order restored by example index."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids else None
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "index": torch.tensor(indices)}
    if types is not None:
        batch["token_type_ids"] = types
    if data.labels:
        batch["labels"] = torch.tensor([data.labels[i] for i in indices])
    return batch
