"""Batch prediction: `tlscale predict` (tlscale.inference.predict_file) vs transformers' `pipeline` on the same
saved model, the same sentences, the same batch size and threads; both must give the same labels.

tlscale's side is the whole command's work: read the file, tokenize, score, write JSONL. The pipeline gets the
sentences already in memory and writes nothing (a head start). Sentences: the SST-2 training file, repeated
until --rows (default 100,000). The model: a tlscale classification run's `model/` folder (by default
runs/sst2-minilm-full/model: `make demo` trains it); the pipeline loads it with plain transformers
(AutoModelForSequenceClassification, trust_remote_code for tlscale's pooled head).

    .venv/bin/python bench/predict_vs_pipeline.py [--checkpoint RUN/model] [--rows 100000] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import DATA, ROOT  # sets up paths and offline mode

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the pipeline lists every class it knows for a custom one


def sentences(rows: int) -> list[str]:
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()[1:]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    return [texts[i % len(texts)] for i in range(rows)]


def run_tlscale(checkpoint: Path, texts: list[str], batch_size: int, folder: Path) -> tuple[float, list[str], list]:
    from tlscale.inference.evaluate import predict_file

    source = folder / "input.tsv"
    source.write_text("sentence\n" + "".join(t + "\n" for t in texts))
    target = folder / "predictions.jsonl"
    start = time.perf_counter()
    predict_file(checkpoint, source, target, text_column="sentence", batch_size=batch_size)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    return seconds, [r["label"] for r in rows], [r["probabilities"] for r in rows]


def run_pipeline(checkpoint: Path, texts: list[str], batch_size: int) -> tuple[float, list[str], list]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(hf_logging.CRITICAL)  # it lists every class it knows for a custom one, then works
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)
    start = time.perf_counter()
    outputs = classify(texts, batch_size=batch_size, truncation=True)
    seconds = time.perf_counter() - start
    probabilities = [{o["label"]: o["score"] for o in out} for out in outputs]
    return seconds, [max(p, key=p.get) for p in probabilities], probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "sst2-minilm-full" / "model")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results-predict-vs-pipeline.json"))
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        raise SystemExit(f"{args.checkpoint}: no saved model here; train one first (make demo) or pass --checkpoint")
    import torch

    texts = sentences(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        ours, our_labels, our_probs = run_tlscale(args.checkpoint, texts, args.batch_size, Path(tmp))
    theirs, their_labels, their_probs = run_pipeline(args.checkpoint, texts, args.batch_size)
    same = sum(a == b for a, b in zip(our_labels, their_labels))
    gap = max(abs(p[name] - q[name]) for p, q in zip(our_probs, their_probs) for name in p)
    result = {"rows": args.rows, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "checkpoint": str(args.checkpoint), "tlscale_s": round(ours, 2), "pipeline_s": round(theirs, 2),
              "tlscale_rows_per_s": round(args.rows / ours, 1), "pipeline_rows_per_s": round(args.rows / theirs, 1),
              "speedup": round(theirs / ours, 2), "same_labels": same, "max_probability_difference": gap}
    print(json.dumps(result, indent=2))
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
