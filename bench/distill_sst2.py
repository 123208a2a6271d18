"""Knowledge distillation on SST-2 with the real MiniLM: teacher (6 layers, fine-tuned on 8,000 rows) vs a
3-layer student (blocks 0, 2, 4 of the teacher) trained on the labels alone vs the same student distilled
(configs/sst2-minilm-distill.yaml: the 8,000 labelled rows + 20,000 unlabelled SST-2 sentences, alpha 0.5,
T 2). Dev accuracy per seed, mean and std, and predict latency per 1,000 dev sentences of each model (the
fastest of 3 passes, one process, batch 64).

The recipe was fixed before any run (DistilBERT-style values), not chosen on dev. The teacher is trained once
without dev checkpoint selection (training.eval_every_steps=null) and reused when its folder exists.

    .venv/bin/python bench/distill_sst2.py [--seeds 0 1 2] [--runs runs] [--add]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT

CONFIG = ROOT / "configs" / "sst2-minilm-distill.yaml"
RESULTS = ROOT / "bench" / "results-distill-sst2.json"
LABELS_ONLY = ["distill.teacher=[]", "distill.unlabeled_file=null", "distill.unlabeled_limit=null"]


def train(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", *args, "--no-progress"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    out = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
    return json.loads((Path(out) / "metrics.json").read_text())


def latency(model_dir: Path, spec_file: Path) -> float:
    """Seconds per 1,000 dev sentences, in a process of its own."""
    result = subprocess.run([sys.executable, "-m", "tlscale.ladder.latency", str(model_dir), str(spec_file)],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return 1000 * measured["seconds"] / measured["examples"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--add", action="store_true", help="keep the other seeds of the last results file when "
                        "its teacher scored the same (a rerun of the same teacher), and report them all")
    args = parser.parse_args()
    runs = args.runs.resolve()
    teacher = runs / "sst2-minilm-teacher"
    env_runs = f"TLSCALE_RUNS={runs}"
    import os

    os.environ["TLSCALE_RUNS"] = str(runs)
    if not (teacher / "metrics.json").is_file():
        train(str(ROOT / "configs" / "sst2-minilm-full.yaml"), f"output_dir={teacher}",
              "training.eval_every_steps=null", "--overwrite")
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    results: dict[str, list[dict]] = {"labels only": [], "distilled": []}
    for seed in args.seeds:
        for name, extra in (("labels only", LABELS_ONLY), ("distilled", [])):
            out = runs / "sst2-distill" / name.replace(" ", "-") / f"seed{seed}"
            metrics = train(str(CONFIG), f"seed={seed}", f"output_dir={out}", "--overwrite", *extra)
            results[name].append({"seed": seed, "accuracy": metrics["eval"]["accuracy"],
                                  "train_s": metrics["train_runtime_s"], "examples": metrics["train_examples"],
                                  "distill": metrics.get("data", {}).get("distill")})
            print(f"{name} seed {seed}: accuracy {metrics['eval']['accuracy']:.4f}, {metrics['train_examples']} "
                  f"transfer texts, {metrics['train_runtime_s']:.0f} s", flush=True)
    spec_file = runs / "sst2-distill" / "distilled" / f"seed{args.seeds[0]}" / "spec.yaml"
    speed = {"teacher": latency(teacher / "model", spec_file),
             "student": latency(runs / "sst2-distill" / "distilled" / f"seed{args.seeds[0]}" / "model", spec_file)}
    summary = {"teacher": {"accuracy": teacher_metrics["eval"]["accuracy"], "ms_per_1000": 1000 * speed["teacher"],
                           "params": teacher_metrics["total_params"]},
               "speedup": speed["teacher"] / speed["student"], "command": f"{env_runs} python bench/distill_sst2.py"}
    last = RESULTS.is_file() and json.loads(RESULTS.read_text())
    if args.add and last and last["teacher"]["accuracy"] == summary["teacher"]["accuracy"]:
        for name, rows in results.items():
            rows[:0] = [r for r in last[name]["seeds"] if r["seed"] not in args.seeds]
            rows.sort(key=lambda r: r["seed"])
    for name, rows in results.items():
        accuracies = [r["accuracy"] for r in rows]
        summary[name] = {"mean": statistics.mean(accuracies),
                         "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                         "seeds": rows, "ms_per_1000": 1000 * speed["student"]}
    print(f"\nteacher (6 layers): {summary['teacher']['accuracy']:.4f}, {1000 * speed['teacher']:.0f} ms per 1,000")
    for name in results:
        print(f"student (3 layers), {name}: {summary[name]['mean']:.4f} ± {summary[name]['std']:.4f}")
    print(f"student speed-up: {summary['speedup']:.2f}x ({1000 * speed['student']:.0f} ms per 1,000)")
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
