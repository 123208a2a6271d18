"""Tokenized datasets, length-grouped batches and dynamic padding."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlscale.data.classification import Examples

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(examples: Examples, tokenizer, max_length: int) -> Encoded:
    if examples.store is not None and examples.store.max_length == max_length:  # tokenized when cached
        return examples.store.encoded(examples.rows, examples.labels)
    out, long = tokenize_rows(examples, tokenizer, max_length)
    return Encoded(out["input_ids"], out.get("token_type_ids"), list(examples.labels), len(long))


def tokenize_rows(examples: Examples, tokenizer, max_length: int) -> tuple[dict, list[int]]:
    """Tokenize once untruncated (to count what truncation cuts), then again only the long ones, which are
    returned too."""
    out = dict(tokenizer(list(examples.texts), list(examples.pairs) if examples.pairs is not None else None,
                         truncation=False, verbose=False))
    long = [i for i, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
    if long:
        pairs = [examples.pairs[i] for i in long] if examples.pairs is not None else None
        cut = tokenizer([examples.texts[i] for i in long], pairs, truncation=True, max_length=max_length)
        for key in out:
            for position, i in enumerate(long):
                out[key][i] = cut[key][position]
    return out, long


def lengths(rows) -> list[int]:
    """Token counts of rows (lists, or a cached store's memory-mapped rows, which know theirs)."""
    return rows.lengths() if hasattr(rows, "lengths") else [len(row) for row in rows]


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


def no_grad(function):
    """torch.no_grad() as a decorator that imports torch when called, not when the module loads."""
    import functools

    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return without_gradients


def pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """Rows of token-level values as one (rows, longest) long tensor, padded with value on the right
    (left: for generation, so every prompt ends where the new tokens start). The one padding helper."""
    import torch

    width = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            target = out[i, width - len(row):] if left else out[i, :len(row)]
            target.copy_(torch.as_tensor(row, dtype=torch.long))
    return out


def attention_mask(rows: list[list[int]], left: bool = False) -> torch.Tensor:
    return pad([[1] * len(row) for row in rows], 0, left)


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    rows = [data.input_ids[i] for i in indices]
    batch = {"input_ids": pad(rows, pad_id), "attention_mask": attention_mask(rows), "index": torch.tensor(indices)}
    if data.token_type_ids:
        batch["token_type_ids"] = pad([data.token_type_ids[i] for i in indices], 0)
    if data.labels:
        batch["labels"] = torch.tensor([data.labels[i] for i in indices])
    return batch
