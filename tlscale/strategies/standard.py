"""The classic transfer strategies: full, feature extraction, partial, gradual unfreezing."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt, model_validator

from tlscale.errors import ConfigError
from tlscale.spec.schema import StrategySpec
from tlscale.strategies.base import STRATEGIES, Strategy, groups_of, set_trainable

if TYPE_CHECKING:  # torch loads when a strategy runs, not when a spec is checked
    from torch import nn


class FeatureExtractionOptions(StrategySpec):
    cache_features: bool = Field(True, description="feature_extraction: run the frozen backbone once per example.")
    head_l2: float | None = Field(
        None, gt=0.0, le=10.0, description="feature_extraction: add head_l2/2 x the squared norm of the head's "
        "weight matrices to the mean training loss, the penalty of a logistic-regression probe (head_l2 = 1 / (C x "
        "rows)). Wide features (several pool_layers) need more than AdamW's weight decay can give; e.g. 0.01.")

    @model_validator(mode="after")
    def _no_layer_decay(self) -> FeatureExtractionOptions:
        if self.layer_lr_decay is not None:
            raise ValueError("layer_lr_decay has no effect with feature_extraction (the backbone is frozen)")
        return self


class PartialOptions(StrategySpec):
    trainable_layers: PositiveInt = Field(description="partial: top k transformer layers that train (required).")


class GradualUnfreezeOptions(StrategySpec):
    unfreeze_every_steps: PositiveInt | None = Field(
        None, description="gradual_unfreeze: unfreeze one more layer group every N optimizer steps "
        "(default: every epoch).")


@STRATEGIES.register("full")
class Full(Strategy):
    """Everything trains."""


@STRATEGIES.register("feature_extraction")
class FeatureExtraction(Strategy):
    """Backbone frozen, only the new head trains; pooled features can be computed once."""

    options = FeatureExtractionOptions
    caches_features = True

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, set(groups_of(model).head) - backbone_names(model))
        return model

    def check(self, spec) -> None:
        super().check(spec)
        dist = spec.distributed
        if self.spec.head_l2 and dist.backend == "deepspeed" and dist.zero_stage == 3:
            raise ConfigError("strategy.head_l2: ZeRO-3 partitions the head's weights, so their norm is not on "
                              "any one rank; use zero_stage 1 or 2 (the head is small) or leave head_l2 out")

    def loss(self, model: nn.Module, batch: dict, task_loss):
        loss = task_loss(model, batch)
        if self.spec.head_l2:
            weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]  # not the biases
            loss = loss + self.spec.head_l2 / 2 * sum(w.pow(2).sum() for w in weights)
        return loss


@STRATEGIES.register("partial")
class Partial(Strategy):
    """The top k transformer blocks and the head train."""

    options = PartialOptions

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

    options = GradualUnfreezeOptions
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
