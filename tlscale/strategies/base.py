"""What a transfer strategy is: it decides which parameters train, and when."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tlscale.models.layers import LayerGroups, layer_groups
from tlscale.registry import Registry
from tlscale.spec.schema import StrategySpec

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec is checked
    from torch import nn

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


class Strategy:
    """Default behaviour: everything trains, nothing changes during training."""

    options: type[StrategySpec] = StrategySpec  # the spec's `strategy` section for this strategy (a subclass)
    caches_features = False  # True: the backbone is frozen and its pooled output may be cached
    unfreezes_later = False  # True: parameters frozen at start train later (the optimizer must hold them)

    def __init__(self, spec: StrategySpec):
        self.spec = spec

    def check(self, spec) -> None:
        """Preflight (validate, launchers): what can fail before any weight is read."""
        self.load_options()

    def load_options(self) -> dict:
        """Extra from_pretrained arguments for the backbone (QLoRA's quantization config)."""
        return {}

    def apply(self, model: nn.Module) -> nn.Module:
        """Decide what trains, once, before the optimizer is built; may wrap the model (LoRA)."""
        set_trainable(model, {name for name, _ in model.named_parameters()})
        return model

    def on_step(self, model: nn.Module, step: int, epoch: int, steps_per_epoch: int) -> bool:
        """Called before every optimizer step; returns True if it changed what trains."""
        return False

    def prepare(self, accelerator) -> None:
        """Once the Accelerator exists: place models of the strategy's own (a distillation teacher) on
        accelerator.device. The student is prepared by the loop."""

    def loss(self, model: nn.Module, batch: dict, task_loss) -> "torch.Tensor":
        """The training loss of one micro-batch; task_loss(model, batch) is the task's own. A strategy
        that adds a term (a teacher's soft targets, a regulariser) wraps it here."""
        return task_loss(model, batch)


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
    from tlscale.models.quantization import unquantized_numel  # ZeRO-3 partitions to 0; 4-bit packs 2 per byte

    sizes = {id(p): unquantized_numel(p) for p in model.parameters()}
    trainable = sum(sizes[i] for i, t in seen.items() if t)
    return trainable, sum(sizes.values())


def build_strategy(spec: StrategySpec) -> Strategy:
    return STRATEGIES.get(spec.name, field="strategy.name")(spec)


def strategy_spec(name: str = "full", **options) -> StrategySpec:
    """A strategy section in code (tests, notebooks): validated by the strategy's own options model."""
    return STRATEGIES.get(name, field="strategy.name").options(name=name, **options)
