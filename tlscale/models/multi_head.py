"""One encoder shared by several tasks' models (multi_task).

Each task keeps its own complete transformers model, built by the task as for a single-task run: its forward,
its loss and its save_pretrained stay the task's. They are rewired around one encoder, and this module
registers that encoder once and each model's head modules once: parameters, optimizer groups, checkpoints
and state dicts hold every tensor once, and strategies see an ordinary "base model + new heads" layout
(layer groups of `encoder`, head `heads`).
"""
from __future__ import annotations

from torch import nn


class MultiTaskModel(nn.Module):
    base_model_prefix = "encoder"

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        names = list(models)
        first = models[names[0]]
        self.encoder = first.base_model
        self.heads = nn.ModuleDict()
        for name, model in models.items():
            base = model.base_model
            if type(base) is not type(self.encoder):
                raise ValueError(f"task '{name}': its model's encoder is a {type(base).__name__}, the first "
                                 f"task's a {type(self.encoder).__name__}; they cannot be shared")
            setattr(model, model.base_model_prefix, self.encoder)
            self.heads[name] = nn.ModuleDict({child: module for child, module in model.named_children()
                                              if child != model.base_model_prefix})
        self.names = names
        self.config = first.config
        object.__setattr__(self, "task_models", dict(models))  # not registered: their modules are, above

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    def forward(self, task, **batch):
        """task: the task's position in names (a tensor in a collated batch)."""
        return self.task_models[self.names[int(task)]](**batch)

    def train(self, mode: bool = True):
        super().train(mode)
        for model in self.task_models.values():  # their own flag (a task's evaluation saves and restores it)
            model.training = mode
        return self
