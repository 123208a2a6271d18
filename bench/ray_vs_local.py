"""Wall time of one training job on Ray (2 workers on a local cluster that the command starts) vs the same
spec as 2 local processes (torch's launcher), start-up included: the whole `tlscale train` command.

The job: full fine-tuning of the real MiniLM on 1,500 SST-2 rows with DDP over gloo, batch 16, 1 epoch.
Local runs first (the peer), then Ray; each command run twice, the faster of each kept.

    .venv/bin/python bench/ray_vs_local.py [--rows 1500] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, sst2_spec


def timed_train(spec_file: Path, *extra: str) -> float:
    env = {**os.environ, "RAY_DEDUP_LOGS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(spec_file), "--no-progress", *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times: dict[str, list[float]] = {"local": [], "ray": []}
        metrics = {}
        for runner in ("local", "ray"):
            for attempt in range(args.repeats):
                out = Path(tmp) / f"{runner}-{attempt}"
                raw = sst2_spec(out, {"name": "full", "head_lr": 2e-3}, args.rows, epochs=1, batch_size=16, lr=1e-4)
                raw["distributed"] = {"backend": "ddp", "num_processes": 2}
                if runner == "ray":
                    raw["runner"] = "ray"
                    raw["resources"] = {"num_workers": 2, "cpus_per_worker": 1}
                spec_file = Path(tmp) / f"{runner}-{attempt}.yaml"
                spec_file.write_text(yaml.safe_dump(raw))
                times[runner].append(timed_train(spec_file))
                metrics[runner] = json.loads((out / "metrics.json").read_text())
                print(f"{runner} run {attempt + 1}: {times[runner][-1]:.1f} s wall, "
                      f"training {metrics[runner]['train_runtime_s']:.1f} s, "
                      f"dev accuracy {metrics[runner]['eval']['accuracy']:.4f}", flush=True)
        local, ray = min(times["local"]), min(times["ray"])
        print(f"2 local processes {local:.1f} s, Ray 2 workers (local cluster started by the command) {ray:.1f} s: "
              f"ratio ray/local {ray / local:.2f}")
        print(json.dumps({"rows": args.rows, "wall_s": times, "ratio_ray_to_local": round(ray / local, 3),
                          "train_runtime_s": {k: m["train_runtime_s"] for k, m in metrics.items()},
                          "accuracy": {k: m["eval"]["accuracy"] for k, m in metrics.items()}}))


if __name__ == "__main__":
    main()
