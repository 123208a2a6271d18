"""Optimizer parameter groups: discriminative (layer-wise) learning rates and a head LR."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tlscale.models.layers import layer_groups
from tlscale.strategies.base import base_model
from tlscale.spec.schema import StrategySpec, TrainingSpec

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec is checked
    from torch import nn

NO_DECAY_HINTS = ("bias", "layernorm", "layer_norm", "ln_", "norm.")


def parameter_groups(model: nn.Module, training: TrainingSpec, strategy: StrategySpec,
                     include_frozen: bool = False) -> list[dict]:
    """One group per (layer, decay/no-decay) holding trainable parameters. A strategy that unfreezes
    later (gradual_unfreeze) asks for the frozen ones too, so it needs no new optimizer: AdamW skips
    parameters without grads. (ZeRO refuses groups with nothing trainable, hence the default.)"""
    model = base_model(model)
    groups = layer_groups(model).bottom_to_top()
    decay = strategy.layer_lr_decay or 1.0
    head_lr = strategy.head_lr or training.lr
    params = {n: p for n, p in model.named_parameters() if include_frozen or p.requires_grad}
    result = []
    for depth_from_top, names in enumerate(reversed(groups)):
        lr = head_lr if depth_from_top == 0 else training.lr * decay ** (depth_from_top - 1)
        names = [n for n in names if n in params]
        for wd, chosen in ((training.weight_decay, [n for n in names if not _no_decay(n)]),
                           (0.0, [n for n in names if _no_decay(n)])):
            if chosen:
                result.append({"params": [params[n] for n in chosen], "lr": lr, "weight_decay": wd})
    return result


def _no_decay(name: str) -> bool:
    lowered = name.lower()
    return any(hint in lowered for hint in NO_DECAY_HINTS)
