"""Time to accuracy: wall seconds from the start of training until SST-2 dev accuracy (872 sentences) first
reaches --target (0.85), the real MiniLM, the 8,000 rows of configs/sst2-minilm-full.yaml.

- tlscale: the shipped recipe (configs/sst2-minilm-full.yaml: lr 1e-4, head lr 2e-3, warmup 10%, batches grouped
  by length), evaluated every --every steps; once in fp32 (as shipped) and once under bf16 autocast.
- transformers.Trainer: its defaults plus the same model, rows, learning rate and batch size (no head rate, no
  warmup, random batches, fp32), evaluated every --every steps on the same dev sentences.

Both count their evaluations in the wall time and stop at the first evaluation at or above the target; a run
that never gets there within the epoch reports its best accuracy and when it got it, and the ratio against it is
a lower bound (the peer's last evaluation's time over ours). Each seed (--seeds) seeds both sides' data order and
new head; per seed in one process, the peer first (any warm-up advantage goes to it). The figure is the median
ratio over seeds.

    .venv/bin/python bench/time_to_accuracy.py [--target 0.85] [--every 50] [--seeds 42 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, trainer_run_to_target  # sets up paths and offline mode

from tlscale import train
from tlscale.spec import load_spec


def tlscale_run(out: Path, every: int, target: float, mixed_precision: str, seed: int) -> dict:
    overrides = [f"output_dir={out}", f"training.eval_every_steps={every}", "training.keep_best=false",
                 f"training.mixed_precision={mixed_precision}", "training.report_to=[]", f"seed={seed}"]
    spec = load_spec(ROOT / "configs" / "sst2-minilm-full.yaml", overrides)
    start = time.time()
    train(spec, show_progress=False, overwrite=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [(r["time"] - start, r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    return first_at(evaluations, target)


def first_at(evaluations: list[tuple[float, int, float]], target: float) -> dict:
    reached = next((e for e in evaluations if e[2] >= target), None)
    best = max(evaluations, key=lambda e: e[2])
    chosen = reached or best
    return {"reached": reached is not None, "seconds": round(chosen[0], 1), "step": chosen[1],
            "accuracy": round(chosen[2], 4), "evaluations": len(evaluations),
            "last_evaluation_seconds": round(evaluations[-1][0], 1)}


def ratio(peer: dict, ours: dict) -> dict:
    """The peer's seconds over ours; where the peer never got there, a lower bound: its last evaluation's time."""
    if not ours["reached"]:
        return {"ratio": None, "lower_bound": False}
    if peer["reached"]:
        return {"ratio": round(peer["seconds"] / ours["seconds"], 2), "lower_bound": False}
    return {"ratio": round(peer["last_evaluation_seconds"] / ours["seconds"], 2), "lower_bound": True}


def shown(r: dict) -> str:
    return "never" if r["ratio"] is None else (">= " if r["lower_bound"] else "") + f"{r['ratio']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results-time-to-accuracy.json"))
    args = parser.parse_args()
    results = {"target": args.target, "every_steps": args.every, "seeds": {}}
    names = ("tlscale_shipped", "tlscale_shipped_bf16")
    for seed in args.seeds:
        spec = load_spec(ROOT / "configs" / "sst2-minilm-full.yaml", ["training.report_to=[]", f"seed={seed}"])
        results["rows"] = spec.data.limit
        run = {"trainer_defaults": first_at(trainer_run_to_target(spec, args.every, args.target), args.target)}
        print(f"seed {seed} Trainer:", run["trainer_defaults"], flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name, precision in zip(names, ("no", "bf16")):
                run[name] = tlscale_run(Path(tmp) / name, args.every, args.target, precision, seed)
                run[f"ratio_{name}"] = ratio(run["trainer_defaults"], run[name])
                print(f"seed {seed} {name}:", run[name], "ratio", shown(run[f"ratio_{name}"]), flush=True)
        results["seeds"][str(seed)] = run
    for name in names:
        ratios = [run[f"ratio_{name}"]["ratio"] for run in results["seeds"].values()]
        if None not in ratios:
            results[f"median_ratio_{name}"] = statistics.median(ratios)
    print(json.dumps(results, indent=2))
    for name in names:
        per_seed = ", ".join(f"{seed}: {shown(run[f'ratio_{name}'])}" for seed, run in results["seeds"].items())
        print(f"{name}: Trainer's time to {args.target} over ours, per seed {per_seed}; median "
              f"{results.get(f'median_ratio_{name}', 'n/a')} (a lower bound where Trainer never got there)")
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
