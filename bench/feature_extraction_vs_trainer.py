"""Feature extraction over 5 epochs: tlscale (frozen backbone, features cached after epoch 1)
vs transformers.Trainer with the backbone frozen (requires_grad=False), same model and rows.

    .venv/bin/python bench/feature_extraction_vs_trainer.py [--rows 2000] [--epochs 5]
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
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_from_dict(sst2_spec(Path(tmp) / "run", {"name": "feature_extraction"}, args.rows, args.epochs,
                                        args.batch_size, 3e-3))
        theirs = trainer_run(spec, freeze_backbone=True)  # first: any warm-up advantage goes to the peer
        ours = train(spec, show_progress=False).metrics
    epochs = ours["epoch_times_s"]
    later = sum(epochs[1:]) / max(len(epochs) - 1, 1)
    print(f"\nfeature extraction, MiniLM, {args.rows} SST-2 rows, {args.epochs} epochs, batch {args.batch_size}")
    print(f"  tlscale epoch times (s): {epochs}  -> later epochs average {later / epochs[0]:.1%} of epoch 1")
    print(f"  tlscale              {ours['train_runtime_s']:7.1f} s  {ours['train_samples_per_s']:8.1f} samples/s")
    print(f"  transformers.Trainer {theirs['train_runtime']:7.1f} s  {theirs['train_samples_per_second']:8.1f} samples/s")
    print(f"  speed-up tlscale vs Trainer = {theirs['train_runtime'] / ours['train_runtime_s']:.2f}x")


if __name__ == "__main__":
    main()
