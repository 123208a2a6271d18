"""Full fine-tuning of the real MiniLM on all of SST-2's training rows: epochs and learning rate chosen on a
validation split of the training file, then the chosen recipe trained on every row and scored once on the 872
dev sentences.

The split (bench/common.py sst2_sentence_split, drop="phrase"): 800 training rows of 10+ words (whole sentences,
like the dev set's) validate; every row that is a phrase of one of them, or contains one, is dropped from the
rest (SST-2's rows are phrases cut from its sentences: a random row split would reward memorizing). Every recipe
of the grid trains on what is left (64,145 rows) and is scored on the 800 at the end of its schedule (no best
checkpoint picked); the validation accuracy every 1,000 steps is kept as the curve. The best is then trained on
all 67,349 rows (configs/sst2-minilm-full-all.yaml with the chosen epochs and lr) and scored on dev.
bf16 autocast throughout, as the config; one epoch is ~8 minutes here.

    .venv/bin/python bench/sst2_all_recipe.py [--runs runs/sst2-all-recipe]
    .venv/bin/python bench/sst2_all_recipe.py --grid 2:5e-5 --add   # more recipes; the best of all is chosen
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, sst2_sentence_split, train_config

CONFIG = ROOT / "configs" / "sst2-minilm-full-all.yaml"
RESULTS = ROOT / "bench" / "results-sst2-all-recipe.json"
GRID = ["1:1.0e-4", "3:5.0e-5"]  # epochs:lr; the first is the shipped 8,000-row recipe's


def curve(run: Path) -> list[list[float]]:
    """[step, validation accuracy] of every evaluation in the run's metrics.jsonl."""
    rows = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    return [[row["step"], round(row["eval/accuracy"], 4)] for row in rows if "eval/accuracy" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sst2-all-recipe")
    parser.add_argument("--grid", nargs="+", default=GRID, help="recipes to try, as EPOCHS:LR")
    parser.add_argument("--add", action="store_true",
                        help="keep the recipes of the last search (bench/results-sst2-all-recipe.json) and add these")
    args = parser.parse_args()
    fit, val = sst2_sentence_split(args.runs / "split", rows=None, drop="phrase")
    search = json.loads(RESULTS.read_text())["search"] if args.add and RESULTS.is_file() else []
    for epochs, lr in (recipe.split(":") for recipe in args.grid):
        run = args.runs / f"search-{len(search)}"
        metrics = train_config(CONFIG, f"output_dir={run}", f"data.train_file={fit}", f"data.eval_file={val}",
                               f"training.epochs={epochs}", f"training.lr={lr}", "training.eval_every_steps=1000",
                               "training.keep_best=false")
        search.append({"epochs": int(epochs), "lr": float(lr), "validation_accuracy": metrics["eval"]["accuracy"],
                       "curve": curve(run), "train_examples": metrics["train_examples"],
                       "train_runtime_s": metrics["train_runtime_s"]})
        print({k: v for k, v in search[-1].items() if k != "curve"}, flush=True)
    best = max(search, key=lambda row: row["validation_accuracy"])  # first of ties: the earlier recipe
    final = train_config(CONFIG, f"output_dir={args.runs / 'dev'}", f"training.epochs={best['epochs']}",
                         f"training.lr={best['lr']}")
    results = {"split": {"fit": search[0]["train_examples"], "validation": 800, "validation_min_words": 10,
                         "drop": "phrases of a validation sentence and rows containing one"},
               "search": search, "chosen": {k: best[k] for k in ("epochs", "lr", "validation_accuracy")},
               "dev": {"accuracy": final["eval"]["accuracy"], "examples": final["eval"]["num_examples"],
                       "train_examples": final["train_examples"], "train_runtime_s": final["train_runtime_s"]}}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["dev"], indent=2))


if __name__ == "__main__":
    main()
