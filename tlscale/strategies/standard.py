"""The classic transfer strategies: full, feature extraction, partial, gradual unfreezing."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a strategy runs, not when a spec is checked
    from torch import nn

from tlscale.strategies.base import STRATEGIES, Strategy, groups_of, set_trainable


@STRATEGIES.register("full")
class Full(Strategy):
    """Everything trains."""


@STRATEGIES.register("feature_extraction")
class FeatureExtraction(Strategy):
    """Backbone frozen, only the new head trains; pooled features can be computed once."""

    caches_features = True

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, set(groups_of(model).head) - backbone_names(model))
        return model


@STRATEGIES.register("partial")
class Partial(Strategy):
    """The top k transformer blocks and the head train."""

    def apply(self, model: nn.Module) -> nn.Module:
        groups = groups_of(model)
        k = self.spec.trainable_layers
        if k > len(groups.blocks):
            from tlscale.errors import ConfigError

            raise ConfigError(
                f"strategy.trainable_layers: expected at most {len(groups.blocks)} (the model's layer count), found {k}"
            )
        top = [name for block in groups.blocks[len(groups.blocks) - k:] for name in block]
        set_trainable(model, set(top) | set(groups.head))
        return model


@STRATEGIES.register("gradual_unfreeze")
class GradualUnfreeze(Strategy):
    """ULMFiT: head first, then one more group from the top every epoch (or every N steps)."""

    unfreezes_later = True

    def apply(self, model: nn.Module) -> nn.Module:
        self._stage = -1
        self.on_step(model, step=0, epoch=0, steps_per_epoch=1)
        return model

    def stage(self, step: int, epoch: int) -> int:
        every = self.spec.unfreeze_every_steps
        return step // every if every else epoch

    def on_step(self, model: nn.Module, step: int, epoch: int, steps_per_epoch: int) -> bool:
        stage = self.stage(step, epoch)
        if stage == self._stage:
            return False
        top_down = list(reversed(groups_of(model).bottom_to_top()))
        names = {name for group in top_down[: stage + 1] for name in group}
        set_trainable(model, names)
        self._stage = stage
        return True


def backbone_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(f"{model.base_model_prefix}.")}
