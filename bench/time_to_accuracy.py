"""Time to accuracy: wall seconds from the start of training until SST-2 dev accuracy (872 sentences) first
reaches --target (0.85), the real MiniLM, the 8,000 rows of configs/sst2-minilm-full.yaml.

- tlscale: the shipped recipe (configs/sst2-minilm-full.yaml: lr 1e-4, head lr 2e-3, warmup 10%, batches grouped
  by length), evaluated every --every steps; once in fp32 (as shipped) and once under bf16 autocast.
- transformers.Trainer: its defaults plus the same model, rows, learning rate and batch size (no head rate, no
  warmup, random batches, fp32), evaluated every --every steps on the same dev sentences.

Both count their evaluations in the wall time and stop at the first evaluation at or above the target; a run
that never gets there within the epoch reports its best accuracy and when it got it. In one process, the peer
first (any warm-up advantage goes to it).

    .venv/bin/python bench/time_to_accuracy.py [--target 0.85] [--every 50]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, trainer_run_to_target  # sets up paths and offline mode

from tlscale import train
from tlscale.spec import load_spec


def tlscale_run(out: Path, every: int, target: float, mixed_precision: str) -> dict:
    overrides = [f"output_dir={out}", f"training.eval_every_steps={every}", "training.keep_best=false",
                 f"training.mixed_precision={mixed_precision}", "training.report_to=[]"]
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
            "accuracy": round(chosen[2], 4), "evaluations": len(evaluations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("results-time-to-accuracy.json"))
    args = parser.parse_args()
    spec = load_spec(ROOT / "configs" / "sst2-minilm-full.yaml", ["training.report_to=[]"])
    results = {"target": args.target, "every_steps": args.every, "rows": spec.data.limit}
    results["trainer_defaults"] = first_at(trainer_run_to_target(spec, args.every, args.target), args.target)
    print("Trainer:", results["trainer_defaults"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("no", "bf16"):
            name = "tlscale_shipped" + ("_bf16" if precision == "bf16" else "")
            results[name] = tlscale_run(Path(tmp) / name, args.every, args.target, precision)
            print(f"{name}:", results[name], flush=True)
    peer = results["trainer_defaults"]
    for name in ("tlscale_shipped", "tlscale_shipped_bf16"):
        ours = results[name]
        if ours["reached"] and peer["reached"]:
            results[f"ratio_{name}"] = round(peer["seconds"] / ours["seconds"], 2)
    print(json.dumps(results, indent=2))
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
