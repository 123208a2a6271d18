"""Learning-rate schedules: warmup, then linear, cosine or constant.

The same LambdaLR multipliers as transformers' get_linear/cosine_schedule_with_warmup, written here because
`from transformers import get_scheduler` imports peft and bitsandbytes (about 3 s in every process of every
run, LoRA or not). One difference: "constant" warms up too, as the spec's description says (transformers'
"constant" ignores the warmup).
"""
from __future__ import annotations

import math
from functools import partial

import torch


def _multiplier(step: int, *, shape: str, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    if shape == "constant":
        return 1.0
    if shape == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine: half a cycle down to 0


def lr_schedule(shape: str, optimizer: torch.optim.Optimizer, warmup_steps: int,
                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if shape not in ("linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule {shape!r}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_multiplier, shape=shape, warmup=warmup_steps, total=total_steps))
