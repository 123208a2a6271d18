"""tlscale's loop vs transformers.Trainer: same model (MiniLM), same SST-2 rows, same batch size,
same number of steps, full fine-tuning, in one process. Prints samples/s of each and the ratio.

    .venv/bin/python bench/train_vs_trainer.py [--rows 1600] [--batch-size 16] [--bf16] [--compile]

--compile: tlscale with training.compile (each block compiled in place) against Trainer with torch_compile=True
(the whole model), compile time included in both (the first steps wait for the compiler).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import sst2_spec, trainer_run

from tlscale.spec import spec_from_dict
from tlscale import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = sst2_spec(Path(tmp) / "run", {"name": "full"}, args.rows, 1, args.batch_size, 1e-4,
                        mixed_precision="bf16" if args.bf16 else "no")
        raw["training"]["compile"] = args.compile
        spec = spec_from_dict(raw)
        theirs = trainer_run(spec, freeze_backbone=False, compile=args.compile)  # first: any warm-up goes to the peer
        ours = train(spec, show_progress=False).metrics
    ratio = ours["train_samples_per_s"] / theirs["train_samples_per_second"]
    print(f"\nfull fine-tuning, MiniLM, {args.rows} SST-2 rows, batch {args.batch_size}, "
          f"{ours['steps']} steps, group_by_length on both"
          f"{', bf16 autocast' if args.bf16 else ''}{', torch.compile' if args.compile else ''}")
    print(f"  tlscale              {ours['train_samples_per_s']:8.1f} samples/s  ({ours['train_runtime_s']:.1f} s)")
    print(f"  transformers.Trainer {theirs['train_samples_per_second']:8.1f} samples/s  ({theirs['train_runtime']:.1f} s)")
    print(f"  ratio tlscale/Trainer = {ratio:.2f}")


if __name__ == "__main__":
    main()
