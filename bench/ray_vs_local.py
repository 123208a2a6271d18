"""Wall time of one training job on Ray (2 workers) vs the same spec as 2 local processes (torch's launcher),
start-up included: the whole `tlscale train` command.

The job: full fine-tuning of the real MiniLM on 1,500 SST-2 rows with DDP over gloo, batch 16, 1 epoch.
Local runs first (the peer), then Ray; each command run twice, the faster of each kept. By default each Ray
command starts its own local cluster (and stops it); with --cluster a cluster is started once (`ray start`,
token auth, 2 CPUs) and the jobs connect to it (resources.address), as jobs on a shared cluster do: the first
job on it and the later ones are reported apart.

    .venv/bin/python bench/ray_vs_local.py [--rows 1500] [--repeats 2] [--cluster]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
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


@contextmanager
def running_cluster(tmp: Path):
    """A one-node cluster on loopback, token auth on, stopped afterwards whatever happens."""
    ray = Path(sys.executable).with_name("ray")
    host = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the outward address; 127.0.0.2 stays on loopback
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        subprocess.run([str(ray), "start", "--head", "--port", str(port), "--node-ip-address", host, "--num-cpus", "2",
                        "--temp-dir", str(tmp / "ray"), "--include-dashboard", "false", "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=180)
        yield f"{host}:{port}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=180)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cluster", action="store_true", help="jobs on one running cluster")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        times: dict[str, list[float]] = {"local": [], "ray": []}
        metrics, address = {}, None
        for runner in ("local", "ray"):
            for attempt in range(args.repeats):
                out = Path(tmp) / f"{runner}-{attempt}"
                raw = sst2_spec(out, {"name": "full", "head_lr": 2e-3}, args.rows, epochs=1, batch_size=16, lr=1e-4)
                raw["distributed"] = {"backend": "ddp", "num_processes": 2}
                if runner == "ray":
                    raw["runner"] = "ray"
                    raw["resources"] = {"num_workers": 2, "cpus_per_worker": 1}
                    if args.cluster:
                        address = address or stack.enter_context(running_cluster(Path(tmp)))
                        raw["resources"]["address"] = address
                spec_file = Path(tmp) / f"{runner}-{attempt}.yaml"
                spec_file.write_text(yaml.safe_dump(raw))
                times[runner].append(timed_train(spec_file))
                metrics[runner] = json.loads((out / "metrics.json").read_text())
                print(f"{runner} run {attempt + 1}: {times[runner][-1]:.1f} s wall, "
                      f"training {metrics[runner]['train_runtime_s']:.1f} s, "
                      f"dev accuracy {metrics[runner]['eval']['accuracy']:.4f}", flush=True)
        local, ray = min(times["local"]), min(times["ray"][1:] if args.cluster else times["ray"])
        how = "later jobs on a running cluster" if args.cluster else "local cluster started by the command"
        print(f"2 local processes {local:.1f} s, Ray 2 workers ({how}) {ray:.1f} s: ratio ray/local {ray / local:.2f}")
        if args.cluster:
            print(f"the first job on the fresh cluster: {times['ray'][0]:.1f} s, ratio {times['ray'][0] / local:.2f}")
        print(json.dumps({"rows": args.rows, "cluster": args.cluster, "wall_s": times,
                          "ratio_ray_to_local": round(ray / local, 3),
                          "train_runtime_s": {k: m["train_runtime_s"] for k, m in metrics.items()},
                          "accuracy": {k: m["eval"]["accuracy"] for k, m in metrics.items()}}))


if __name__ == "__main__":
    main()
