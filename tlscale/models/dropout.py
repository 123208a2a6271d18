"""Dropout masks that cost a third as much on CPU.

torch's CPU dropout draws its mask with bernoulli_, ~6 ns an element on 2 cores: a MiniLM training step's 20
masks took ~11 ms of its ~105 ms, as much as its AdamW. A mask needs far fewer random bits than bernoulli_
spends: here each element compares 16 bits of the default generator's 64-bit words with p's threshold,
so p is rounded to a multiple of 2^-16 (0.1 becomes 0.100006) and the kept elements are scaled by 1/(1-p) of
that rounded p, so the output's expectation is the input, as torch's. The masks follow torch.manual_seed (and a
checkpointed block's recomputation, which restores the generator). On GPUs torch's own fused kernel is cheap:
the model is left alone there.
"""
from __future__ import annotations

import torch
from torch import nn

LEVELS = 65536  # 16 bits per element
ROUNDING_TOLERANCE = 1e-3  # relative: a p that 16 bits cannot express this closely keeps torch's own mask


class CPUDropout(nn.Dropout):
    """nn.Dropout with cheaper masks for CPU tensors in training; torch's own everywhere else."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        threshold = expressible_threshold(self.p)
        if not self.training or self.inplace or input.device.type != "cpu" or threshold is None:
            return super().forward(input)
        return input * dropout_noise(input, threshold)


def expressible_threshold(p: float) -> int | None:
    """p in units of 2^-16, or None when that rounding would move p by more than 0.1% (or p is 0 or 1)."""
    threshold = round(p * LEVELS)
    if not 0 < threshold < LEVELS or abs(threshold / LEVELS - p) > ROUNDING_TOLERANCE * p:
        return None
    return threshold


def dropout_noise(like: torch.Tensor, threshold: int) -> torch.Tensor:
    """0 with probability threshold/2^16, else 1/(1 - that), in like's shape and dtype."""
    count = like.numel()
    words = torch.randint(-2**63, 2**63 - 1, (-(-count // 4),), dtype=torch.int64)  # 4 x 16 bits a word
    bits = words.view(torch.int16)[:count].view(like.shape)  # uniform on [-32768, 32767]
    keep = bits >= threshold - LEVELS // 2
    return keep.to(like.dtype).mul_(LEVELS / (LEVELS - threshold))


def use_cpu_dropout(model: nn.Module) -> int:
    """Give every plain nn.Dropout in model the cheaper CPU masks (same module, same p, nothing saved changes);
    returns how many. Attention-probability dropout inside fused attention kernels is not reached."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = CPUDropout
            swapped += 1
    return swapped
