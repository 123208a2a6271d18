"""Another draw of torch's dropout masks at the same seed: the short XQuAD recipe the CI test ran until 2026-12-06
(xquad-minilm-full.yaml, 2 epochs, bf16) with training.fast_dropout=false and the default generator moved a
million draws on once the model is built, so the data order and the new head are the seed's but no mask is the
unshifted run's. How far the masks alone move a recipe's score, next to `tlscale train ... seed=S
training.fast_dropout=B` (bench/README, fast_dropout).

    TLSCALE_DATA=../shared/data .venv/bin/python bench/torch_mask_draw.py --seed 2 [--output runs/mask-draw-2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ROOT  # sets up paths and offline mode

import torch

import tlscale.training.loop as loop
from tlscale import train
from tlscale.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    args.output = args.output or Path(tempfile.mkdtemp()) / "run"
    build = loop._build

    def shifted(spec):
        built = build(spec)
        torch.rand(10**6)  # a million 32-bit draws: none of the run's mask seeds is the unshifted run's
        return built

    loop._build = shifted
    spec = load_spec(ROOT / "configs" / "xquad-minilm-full.yaml",
                     [f"output_dir={args.output}", "training.epochs=2", "training.mixed_precision=bf16",
                      f"seed={args.seed}", "training.fast_dropout=false"])
    train(spec, show_progress=False)
    scores = json.loads((args.output / "metrics.json").read_text())["eval"]
    print(f"seed {args.seed}, torch's masks, shifted stream: EM {scores['exact_match']:.2f} F1 {scores['f1']:.2f}")


if __name__ == "__main__":
    main()
