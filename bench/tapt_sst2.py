"""Task-adaptive pretraining on SST-2 with the real MiniLM: masked-LM on 20,000 SST-2 training sentences
without their labels (configs/sst2-minilm-tapt.yaml), then the 2,000-row full fine-tune
(configs/sst2-minilm-full.yaml, data.limit=2000) from it, against the same fine-tune from the plain checkpoint.
Dev accuracy per seed (the seed draws the 2,000 rows and orders the training), mean and std.

Both recipes were fixed before any run (the fine-tune is the shipped config; TAPT uses the paper's lr and
masking rate), and no checkpoint is chosen on dev (training.eval_every_steps=null).

    .venv/bin/python bench/tapt_sst2.py [--seeds 0 1 2] [--runs runs]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT


def train(config: str, out: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(ROOT / "configs" / config),
                             f"output_dir={out}", "--overwrite", "--no-progress", *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--name", default="sst2-minilm-tapt", help="the TAPT run's folder under --runs")
    parser.add_argument("--skip-plain", action="store_true", help="reuse the plain fine-tunes already in --runs")
    parser.add_argument("tapt_overrides", nargs="*", help="KEY=VALUE overrides of the TAPT config")
    args = parser.parse_args()
    runs = args.runs.resolve()
    os.environ["TLSCALE_RUNS"] = str(runs)
    tapt = runs / args.name
    if not (tapt / "metrics.json").is_file():
        train("sst2-minilm-tapt.yaml", tapt, *args.tapt_overrides)
    pretrain = json.loads((tapt / "metrics.json").read_text())
    print(f"TAPT: {pretrain['train_examples']} sentences, {pretrain['train_runtime_s']:.0f} s, held-out masked "
          f"accuracy {pretrain['eval']['masked_accuracy']:.4f}, loss {pretrain['eval']['loss']:.3f}", flush=True)
    results: dict[str, list[dict]] = {"plain": [], "tapt": []}
    for seed in args.seeds:
        for name, extra in (("plain", []), ("tapt", [f"model.init_from={tapt}"])):
            out = runs / "sst2-tapt" / (name if name == "plain" else args.name) / f"seed{seed}"
            if name == "plain" and args.skip_plain and (out / "metrics.json").is_file():
                metrics = json.loads((out / "metrics.json").read_text())
            else:
                metrics = train("sst2-minilm-full.yaml", out, f"seed={seed}", f"data.limit={args.rows}",
                                "training.eval_every_steps=null", *extra)
            results[name].append({"seed": seed, "accuracy": metrics["eval"]["accuracy"],
                                  "train_s": metrics["train_runtime_s"]})
            print(f"{name} seed {seed}: accuracy {metrics['eval']['accuracy']:.4f}", flush=True)
    summary = {"pretraining": {"sentences": pretrain["train_examples"], "train_s": pretrain["train_runtime_s"],
                               "eval": pretrain["eval"]},
               "rows": args.rows, "tapt_overrides": args.tapt_overrides,
               "command": " ".join(["python bench/tapt_sst2.py", *(["--name", args.name] if args.tapt_overrides else []),
                                    *args.tapt_overrides])}
    for name, rows in results.items():
        accuracies = [r["accuracy"] for r in rows]
        summary[name] = {"mean": statistics.mean(accuracies),
                         "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0, "seeds": rows}
    gain = summary["tapt"]["mean"] - summary["plain"]["mean"]
    print(f"\n{args.rows} rows, {len(args.seeds)} seeds: plain {summary['plain']['mean']:.4f} ± "
          f"{summary['plain']['std']:.4f}, after TAPT {summary['tapt']['mean']:.4f} ± {summary['tapt']['std']:.4f} "
          f"({100 * gain:+.2f} points)")
    suffix = "" if args.name == "sst2-minilm-tapt" else "-" + args.name.removeprefix("sst2-minilm-tapt-")
    (ROOT / "bench" / f"results-tapt-sst2{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
