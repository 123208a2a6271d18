"""Dropout masks that cost a third as much on CPU.

torch's CPU dropout draws its mask with bernoulli_, ~6 ns an element on 2 cores: a MiniLM training step's 20
masks took ~11 ms of its ~105 ms, as much as its AdamW. A mask needs far fewer random bits than bernoulli_
spends: here each element compares 16 bits of the default generator's 64-bit words with p's threshold,
so p is rounded to a multiple of 2^-16 (0.1 becomes 0.100006) and the kept elements are scaled by 1/(1-p) of
that rounded p, so the output's expectation is the input, as torch's. The masks follow torch.manual_seed (and a
checkpointed block's recomputation, which restores the generator). On GPUs torch's own fused kernel is cheap:
the model is left alone there.

Attention probabilities are dropped inside torch's scaled_dot_product_attention, out of a layer's reach, and on
CPU a dropout_p > 0 also sends SDPA from its fused kernel to its math path. With 384-token windows those masks
(batch x heads x 384 x 384 per layer) cost more than the hidden ones: models on transformers' attention interface
get an attention function that is that math path with these masks in training, and SDPA itself otherwise.
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
    """0 with probability threshold/2^16, else 1/(1 - that), in like's shape and dtype (scaled in that dtype, as
    torch's CPU dropout: in bf16, by 1.109375 for p = 0.1)."""
    return dropout_keep(like, threshold).to(like.dtype).mul_(LEVELS / (LEVELS - threshold))


def dropout_keep(like: torch.Tensor, threshold: int) -> torch.Tensor:
    """True with probability 1 - threshold/2^16, in like's shape."""
    count = like.numel()
    words = torch.randint(-2**63, 2**63 - 1, (-(-count // 4),), dtype=torch.int64)  # 4 x 16 bits a word
    bits = words.view(torch.int16)[:count].view(like.shape)  # uniform on [-32768, 32767]
    return bits >= threshold - LEVELS // 2


ATTENTION = "tlscale_cpu_dropout"


def attention_with_cpu_dropout(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, dropout: float = 0.0,
                               scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, except when training on CPU with attention dropout: there, what SDPA's math
    path computes (in float32 for bf16/fp16 inputs, as torch's does) with the cheaper masks. Arguments and mask
    handling as transformers' sdpa_attention_forward."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    threshold = expressible_threshold(dropout) if dropout else None
    if (threshold is None or not module.training or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    queries, keys = query.shape[2], key.shape[2]
    causal = queries > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                         else getattr(module, "is_causal", True))
    if causal:  # as SDPA's is_causal (top-left aligned), which transformers' SDPA path passes
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril()
    with torch.autocast("cpu", enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(2, 3))
        scores.mul_(query.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # the finite minimum, as eager masks: a fully masked row is no NaN
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        probs = probs.mul(dropout_keep(probs, threshold)).mul_(LEVELS / (LEVELS - threshold))
        output = torch.matmul(probs, value.float())
    return output.to(query.dtype).transpose(1, 2).contiguous(), None


def use_cpu_dropout(model: nn.Module) -> tuple[int, int]:
    """Give every plain nn.Dropout in model the cheaper CPU masks (same module, same p, nothing saved changes),
    and every transformers model in it on SDPA attention the function above (not saved: config.json keeps no
    attention implementation). Returns how many dropout layers and how many models."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = CPUDropout
            swapped += 1
    return swapped, use_cpu_dropout_attention(model)


def use_cpu_dropout_attention(model: nn.Module) -> int:
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_with_cpu_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    switched = 0
    for module in model.modules():
        config = getattr(module, "config", None)
        if (isinstance(module, PreTrainedModel) and getattr(config, "_attn_implementation", None) == "sdpa"
                and module._can_set_attn_implementation()):
            module.set_attn_implementation(ATTENTION)
            switched += 1
    return switched
