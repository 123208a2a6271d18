"""training.fast_dropout in isolation: MiniLM full fine-tuning steps on SST-2 batches (grouped by length, batch
16), in one process, each batch stepped once with torch's dropout masks and once with tlscale's cheaper ones,
the order alternating. A machine whose speed drifts from minute to minute (this one's varies by a quarter)
moves both sides alike, which separate runs cannot promise.

    .venv/bin/python bench/dropout_masks.py [--batches 150]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import sst2_spec

import torch
from torch import nn

from tlscale.data import build_classification_data, tokenize
from tlscale.models import build_classifier, load_tokenizer
from tlscale.models.dropout import CPUDropout
from tlscale.spec import spec_from_dict
from tlscale.training.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()
    keep_freed_memory()  # as a tlscale run on CPU: no page faults to blur the difference
    spec = spec_from_dict(sst2_spec(Path(tempfile.mkdtemp()) / "run", {"name": "full"}, 16 * args.batches, 1, 16,
                                    1e-5))
    data = build_classification_data(spec.data, spec.seed)
    encoded = tokenize(data.train, load_tokenizer(spec.model), spec.model.max_length)
    by_length = sorted(range(len(encoded.input_ids)), key=lambda i: len(encoded.input_ids[i]))
    batches = [by_length[i:i + 16] for i in range(0, len(by_length), 16)]
    random.Random(0).shuffle(batches)
    torch.manual_seed(0)
    model = build_classifier(spec.model, data.label_names).train()
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    seconds: dict[str, list[float]] = {"torch": [], "fast": []}
    for n, indices in enumerate(batches):
        longest = max(len(encoded.input_ids[i]) for i in indices)
        ids = torch.tensor([encoded.input_ids[i] + [0] * (longest - len(encoded.input_ids[i])) for i in indices])
        batch = {"input_ids": ids, "attention_mask": (ids != 0).long(),
                 "labels": torch.tensor([encoded.labels[i] for i in indices])}
        for masks in ("torch", "fast") if n % 2 else ("fast", "torch"):
            for module in dropouts:
                module.__class__ = CPUDropout if masks == "fast" else nn.Dropout
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[masks].append(time.perf_counter() - start)
    ours, theirs = (statistics.median(seconds[m][5:]) * 1000 for m in ("fast", "torch"))
    totals = {m: sum(seconds[m][5:]) for m in seconds}
    print(f"MiniLM, {len(batches) - 5} SST-2 batches of 16 (after 5 warm-up), each stepped with both masks; "
          f"{len(dropouts)} dropout layers")
    print(f"  median step: torch's masks {theirs:.1f} ms, fast_dropout {ours:.1f} ms, ratio {theirs / ours:.3f}")
    print(f"  all steps:   torch's masks {totals['torch']:.1f} s, fast_dropout {totals['fast']:.1f} s, "
          f"ratio {totals['torch'] / totals['fast']:.3f}")


if __name__ == "__main__":
    main()
