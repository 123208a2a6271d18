"""Multi-task against single-task with the real MiniLM: a multi_task config (configs/sst2-imdb-minilm-multitask.yaml
by default) trained once per seed, and each of its tasks trained alone with the same recipe (its part spec:
the same model, strategy, optimiser and data). Each task's main metric per seed, mean and std.

Recipes were fixed before any run: the shipped SST-2 recipe (lr 1e-4, head lr 2e-3, batch 16, one epoch
over SST-2), temperature sampling T=2; a task alone trains for as many epochs as make about the batches the
multi-task epoch gave it (--alone-epochs NAME=N; IMDB alone: 3 epochs = 132 batches vs ~125 in the multi-task
run). No checkpoint is chosen on the evaluation sets (no evaluation during training).

    .venv/bin/python bench/multitask.py [--config sst2-imdb-minilm-multitask.yaml] [--seeds 0 1 2]
                                        [--alone-epochs imdb=3] [--runs runs]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from common import ROOT


def train(spec: Path, out: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(spec), f"output_dir={out}",
                             "--overwrite", "--no-progress", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    return json.loads((out / "metrics.json").read_text())


def alone_specs(config: Path, folder: Path) -> dict[str, Path]:
    """Each task's single-task spec (tlscale.tasks.multi_task.part_spec), written as YAML."""
    from tlscale.spec.loading import dump_spec, load_spec
    from tlscale.tasks.multi_task import part_spec

    spec = load_spec(config)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for entry in spec.multi_task.tasks:
        paths[entry.name] = folder / f"{entry.name}.yaml"
        paths[entry.name].write_text(dump_spec(part_spec(spec, entry)))
    return paths


def summary_of(rows: list[dict]) -> dict:
    values = [r["metric"] for r in rows]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="sst2-imdb-minilm-multitask.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alone-epochs", nargs="*", default=["imdb=3"], help="NAME=EPOCHS for a task alone")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    runs = args.runs.resolve()
    os.environ["TLSCALE_RUNS"] = str(runs)
    config = ROOT / "configs" / args.config
    name = config.stem
    folder = runs / "multitask-bench" / name
    alone = alone_specs(config, folder / "specs")
    epochs = dict(item.split("=") for item in args.alone_epochs)
    results: dict = {"multi_task": {t: [] for t in alone}, "alone": {t: [] for t in alone}, "train_s": {}}
    for seed in args.seeds:
        metrics = train(config, folder / "multi_task" / f"seed{seed}", f"seed={seed}")
        results["train_s"].setdefault("multi_task", []).append(metrics["train_runtime_s"])
        for task, part in metrics["eval"]["tasks"].items():
            main_metric = "accuracy" if "accuracy" in part else "f1"
            results["multi_task"][task].append({"seed": seed, "metric": part[main_metric], "name": main_metric})
            print(f"multi_task seed {seed} {task}: {main_metric} {part[main_metric]:.4f}", flush=True)
        for task, spec in alone.items():
            extra = [f"training.epochs={epochs[task]}"] if task in epochs else []
            single = train(spec, folder / task / f"seed{seed}", f"seed={seed}", *extra)
            main_metric = "accuracy" if "accuracy" in single["eval"] else "f1"
            results["alone"][task].append({"seed": seed, "metric": single["eval"][main_metric], "name": main_metric})
            results["train_s"].setdefault(task, []).append(single["train_runtime_s"])
            print(f"{task} alone seed {seed}: {main_metric} {single['eval'][main_metric]:.4f}", flush=True)
    report = {"config": f"configs/{args.config}", "alone_epochs": epochs, "seeds": args.seeds,
              "command": f"python bench/multitask.py --config {args.config} --alone-epochs "
                         + " ".join(args.alone_epochs),
              "tasks": {}, "train_s": {k: statistics.mean(v) for k, v in results["train_s"].items()}}
    print()
    for task in alone:
        both, single = summary_of(results["multi_task"][task]), summary_of(results["alone"][task])
        report["tasks"][task] = {"multi_task": both, "alone": single, "gain": both["mean"] - single["mean"]}
        scale = 100 if results["alone"][task][0]["name"] == "accuracy" else 1
        print(f"{task}: multi-task {both['mean']:.4f} ± {both['std']:.4f}, alone {single['mean']:.4f} ± "
              f"{single['std']:.4f} ({scale * (both['mean'] - single['mean']):+.2f} points)")
    out = ROOT / "bench" / f"results-multitask-{name.removesuffix('-minilm-multitask')}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
