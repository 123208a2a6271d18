"""training.fast_dropout in isolation: full fine-tuning steps of the real MiniLM on a task's own batches (grouped
by length, its collate), in one process, each batch stepped three ways: torch's dropout masks; tlscale's cheaper
ones in the dropout layers only; and in the attention probabilities too (as shipped), the order rotating. A
machine whose speed drifts from minute to minute (this one's varies by a quarter) moves every side alike, which
separate runs cannot promise.

    .venv/bin/python bench/dropout_masks.py [--batches 150]                     # SST-2, 128 tokens, fp32
    .venv/bin/python bench/dropout_masks.py --config configs/xquad-minilm-full.yaml --bf16 --batches 20
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
from transformers import PreTrainedModel

from tlscale.models import load_tokenizer
from tlscale.models.dropout import ATTENTION, CPUDropout, use_cpu_dropout
from tlscale.spec import load_spec, spec_from_dict
from tlscale.tasks import build_task
from tlscale.training.allocator import keep_freed_memory

WARM_UP = 3
MODES = {"torch": "torch's masks", "layers": "fast_dropout, dropout layers only", "fast": "fast_dropout (as shipped)"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--config", help="a job spec (default: SST-2, 16 x batches rows)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as training.mixed_precision=bf16")
    args = parser.parse_args()
    keep_freed_memory()  # as a tlscale run on CPU: no page faults to blur the difference
    output = Path(tempfile.mkdtemp()) / "run"
    if args.config:
        spec = load_spec(args.config, [f"output_dir={output}"])
    else:
        spec = spec_from_dict(sst2_spec(output, {"name": "full"}, 16 * args.batches, 1, 16, 1e-5))
    task = build_task(spec)
    tokenizer = load_tokenizer(spec.model)
    data = task.prepare(tokenizer)
    batches = task.epoch_batches(data.train, spec.training.batch_size, spec.seed, True, 1)
    random.Random(0).shuffle(batches)
    batches = batches[:args.batches]
    torch.manual_seed(0)
    model = task.build_model(data, {}).train()
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    attention_models = [m for m in model.modules()
                        if isinstance(m, PreTrainedModel) and m.config._attn_implementation == "sdpa"]
    use_cpu_dropout(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n, indices in enumerate(batches):
        batch = task.collate(data.train, indices, tokenizer.pad_token_id)
        batch.pop("index", None)
        for masks in list(MODES)[n % 3:] + list(MODES)[:n % 3]:
            for module in dropouts:
                module.__class__ = nn.Dropout if masks == "torch" else CPUDropout
            for module in attention_models:
                module.set_attn_implementation(ATTENTION if masks == "fast" else "sdpa")
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[masks].append(time.perf_counter() - start)
    medians = {m: statistics.median(seconds[m][WARM_UP:]) * 1000 for m in MODES}
    totals = {m: sum(seconds[m][WARM_UP:]) for m in MODES}
    print(f"MiniLM, {spec.task}, {len(batches) - WARM_UP} batches of {spec.training.batch_size} (after {WARM_UP} "
          f"warm-up), {'bf16' if args.bf16 else 'fp32'}, each stepped three ways; {len(dropouts)} dropout "
          f"layers, attention probabilities {'too' if attention_models else 'not reached'}")
    for mode in MODES:
        print(f"  {MODES[mode]:<34} median step {medians[mode]:7.1f} ms (x{medians['torch'] / medians[mode]:.3f}), "
              f"all steps {totals[mode]:6.1f} s (x{totals['torch'] / totals[mode]:.3f})")


if __name__ == "__main__":
    main()
