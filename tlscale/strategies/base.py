"""What a transfer strategy is: it decides which parameters train, and when."""
from __future__ import annotations

from torch import nn

from tlscale.models.layers import LayerGroups, layer_groups
from tlscale.registry import Registry
from tlscale.spec.schema import StrategySpec

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


class Strategy:
    """Default behaviour: everything trains, nothing changes during training."""

    caches_features = False  # True: the backbone is frozen and its pooled output may be cached

    def __init__(self, spec: StrategySpec):
        self.spec = spec

    def apply(self, model: nn.Module) -> nn.Module:
        """Decide what trains, once, before the optimizer is built; may wrap the model (LoRA)."""
        set_trainable(model, {name for name, _ in model.named_parameters()})
        return model

    def on_step(self, model: nn.Module, step: int, epoch: int, steps_per_epoch: int) -> bool:
        """Called before every optimizer step; returns True if it changed what trains."""
        return False


def set_trainable(model: nn.Module, names: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def groups_of(model: nn.Module) -> LayerGroups:
    return layer_groups(model)


def base_model(model: nn.Module) -> nn.Module:
    """The classifier inside a PEFT wrapper (parameter names then match layer_groups)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared tensors once."""
    seen: dict[int, bool] = {}
    for param in model.parameters():
        seen[id(param)] = seen.get(id(param), False) or param.requires_grad
    sizes = {id(p): getattr(p, "ds_numel", p.numel()) for p in model.parameters()}  # ZeRO-3 partitions to 0
    trainable = sum(sizes[i] for i, t in seen.items() if t)
    return trainable, sum(sizes.values())


def build_strategy(spec: StrategySpec) -> Strategy:
    return STRATEGIES.get(spec.name, field="strategy.name")(spec)
