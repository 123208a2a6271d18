"""Will it fit? Per-device memory for each ZeRO stage and offload choice, before submitting a job.

Model states follow the ZeRO paper (Rajbhandari et al. 2020) for mixed-precision Adam: 2 bytes of
16-bit weights, 2 of gradients and 12 of fp32 master weights + Adam moments per trainable parameter
(stage 1 = 4P + 12P/N, stage 2 = 2P + 14P/N, stage 3 = 16P/N), with frozen parameters holding only
their weights: 16 bits, or for QLoRA the frozen Linear weights at 4 bits plus quantization constants
(4.13 bits with double quantization, 4.5 without; 8-bit: 8.25) and the rest at 16.
Full fp32 training uses 4 + 4 + 8 bytes. Activations follow
Korthikanti et al. 2022 (no recomputation): per layer s*b*h*34 + 5*a*s^2*b bytes at 16 bits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelSize:
    total: int
    trainable: int
    largest_layer: int  # parameters of the biggest single module (ZeRO-3 gathers one at a time)
    layers: int
    hidden: int
    heads: int
    trainable_layers: int
    frozen_linear: int = 0  # frozen weights inside Linear layers: what QLoRA quantizes (embeddings stay 16-bit)


@dataclass(frozen=True)
class Option:
    name: str
    backend: str
    zero_stage: int
    offload_optimizer: bool = False
    offload_params: bool = False


OPTIONS = [  # cheapest (least communication and CPU traffic) first
    Option("DDP", "ddp", 0),
    Option("ZeRO-1", "deepspeed", 1),
    Option("ZeRO-2", "deepspeed", 2),
    Option("ZeRO-3", "deepspeed", 3),
    Option("ZeRO-2 + offload optimizer", "deepspeed", 2, offload_optimizer=True),
    Option("ZeRO-3 + offload optimizer", "deepspeed", 3, offload_optimizer=True),
    Option("ZeRO-3 + offload optimizer+params", "deepspeed", 3, offload_optimizer=True, offload_params=True),
]


@dataclass(frozen=True)
class Estimate:
    option: Option
    params: float
    grads: float
    optimizer: float
    activations: float
    cpu: float  # per process, in host memory

    @property
    def device_total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations


def model_states(size: ModelSize, option: Option, n: int, mixed_precision: bool = True,
                 frozen_bits: float = 16) -> tuple[float, float, float, float]:
    """(params, grads, optimizer, cpu) bytes per device."""
    t, frozen = size.trainable, size.total - size.trainable
    w = 2 if mixed_precision else 4  # bytes per trainable weight and gradient on the device
    k = 12 if mixed_precision else 8  # optimizer bytes per trainable parameter
    if frozen_bits < 16:  # quantized Linear weights; embeddings and norms stay unquantized
        frozen_bytes = size.frozen_linear * frozen_bits / 8 + (frozen - size.frozen_linear) * w
    else:
        frozen_bytes = frozen * w
    weights = w * t + frozen_bytes
    stage, cpu = option.zero_stage, 0.0
    params = weights / n if stage == 3 else weights
    grads = w * t / n if stage >= 2 else w * t
    optimizer = k * t / n if stage >= 1 else k * t
    if stage == 3:
        params += w * size.largest_layer  # one full layer gathered at a time
    if option.offload_optimizer:  # ZeRO-Offload: optimizer states and gradient partitions live on the CPU
        cpu += optimizer + grads
        optimizer, grads = 0.0, 0.0
    if option.offload_params:
        cpu += weights / n
        params = w * size.largest_layer
    return params, grads, optimizer, cpu


def activations(size: ModelSize, micro_batch: int, seq: int, mixed_precision: bool = True) -> float:
    """Memory kept for backward through the trainable layers (frozen ones keep nothing)."""
    per_layer = seq * micro_batch * size.hidden * 34 + 5 * size.heads * seq**2 * micro_batch
    return per_layer * size.trainable_layers * (1 if mixed_precision else 2)


def plan(size: ModelSize, n: int, micro_batch: int, seq: int, mixed_precision: bool = True,
         frozen_bits: float = 16) -> list[Estimate]:
    """One estimate per option; a quantized base has no ZeRO-3 options (tlscale refuses QLoRA + ZeRO-3)."""
    act = activations(size, micro_batch, seq, mixed_precision)
    estimates = []
    for option in OPTIONS:
        if frozen_bits < 16 and option.zero_stage == 3:
            continue
        params, grads, optimizer, cpu = model_states(size, option, n, mixed_precision, frozen_bits)
        estimates.append(Estimate(option, params, grads, optimizer, act, cpu))
    return estimates


def recommend(estimates: list[Estimate], device_bytes: float) -> Estimate | None:
    return next((e for e in estimates if e.device_total <= device_bytes), None)


def parse_bytes(text: str) -> float:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        from tlscale.errors import ConfigError

        raise ConfigError(f"--gpu-memory: expected a size such as 80GiB or 24GB, found '{text}'")
    value, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "K": 1e3, "KB": 1e3, "KIB": 1024, "M": 1e6, "MB": 1e6, "MIB": 1024**2, "G": 1e9, "GB": 1e9,
             "GIB": GIB, "T": 1e12, "TB": 1e12, "TIB": 1024**4}[unit]
    return value * scale


def model_size(spec) -> ModelSize:
    """Count parameters without loading weights: build the classifier on the meta device."""
    import torch
    from transformers import AutoConfig

    from tlscale.models.layers import layer_groups
    from tlscale.models.loading import resolve_model_path
    from tlscale.models.pooled_classifier import PooledSequenceClassifier
    from tlscale.strategies import build_strategy, count_parameters

    config = AutoConfig.from_pretrained(resolve_model_path(spec.model.name_or_path))
    labels = spec.data.labels if spec.data is not None else None  # multi_task: one head stands for its few
    config.num_labels = len(labels or ["a", "b"])
    config.classifier_pooling = "cls"
    config.classifier_hidden_size = spec.model.classifier_hidden
    config.classifier_pool_layers = spec.model.pool_layers
    with torch.device("meta"):
        model = PooledSequenceClassifier(config)
    strategy = build_strategy(spec.strategy)
    if spec.strategy.name == "qlora":  # the same adapters on an unquantized (meta) skeleton
        from tlscale.strategies.lora import Lora

        strategy = Lora(spec.strategy)
    model = strategy.apply(model)
    trainable, total = count_parameters(model)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    from tlscale.strategies.base import base_model

    groups = layer_groups(base_model(model))
    named = dict(base_model(model).named_parameters())
    trainable_blocks = sum(any(named[n].requires_grad for n in block) for block in groups.blocks)
    frozen_linear = sum(m.weight.numel() for m in base_model(model).base_model.modules()
                        if type(m).__name__ in ("Linear", "Conv1D") and not m.weight.requires_grad)
    return ModelSize(total=total, trainable=trainable, largest_layer=largest, layers=len(groups.blocks),
                     hidden=config.hidden_size, heads=getattr(config, "num_attention_heads", 1),
                     trainable_layers=trainable_blocks, frozen_linear=frozen_linear)


def frozen_weight_bits(strategy) -> float:
    """Bits per frozen Linear weight on the device, quantization constants included."""
    if strategy.name != "qlora":
        return 16
    if getattr(strategy, "bits", None) == 8:
        return 8.25  # int8 + one fp32 scale per row (rows of ~128+ weights)
    double_quant = getattr(strategy, "double_quant", None) is not False
    return 4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)  # absmax per 64 weights
