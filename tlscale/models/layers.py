"""Split a classifier into layer groups, bottom to top: embeddings, block 0..n-1, head.

Strategies (partial, gradual unfreezing) and discriminative learning rates all
speak in these groups, so the architecture-specific guessing lives here only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec is checked
    from torch import nn

EMBEDDING_HINTS = ("embed", "wte", "wpe", "word_", "position", "token_type")


@dataclass
class LayerGroups:
    embeddings: list[str] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)
    head: list[str] = field(default_factory=list)

    def bottom_to_top(self) -> list[list[str]]:
        return [self.embeddings, *self.blocks, self.head]


def find_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ModuleList of the backbone: its transformer blocks."""
    from torch import nn

    lists = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"cannot find the transformer blocks of {type(backbone).__name__}")
    return max(lists, key=lambda item: len(item[1]))


def compile_blocks(model: nn.Module) -> int:
    """torch.compile each transformer block in place (regional compilation: the blocks share one compiled graph,
    so compile time stays that of one block; dynamic shapes: batches of every length share it too). In place,
    the module tree, its state_dict keys and its checkpoints stay those of the eager model. -> blocks compiled."""
    _, blocks = find_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def checkpoint_activations(model: nn.Module) -> int:
    """transformers' own gradient checkpointing on every pretrained model inside `model` (a PEFT wrapper, a
    multi-task model): non-reentrant, so frozen inputs (LoRA, a frozen embedding) need no grad hooks; the KV cache
    goes off, as generation does not run in training. -> blocks that recompute."""
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    outermost = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    inside = {id(sub) for m in outermost for sub in list(m.modules())[1:]}
    for pretrained in (m for m in outermost if id(m) not in inside):
        if not pretrained.supports_gradient_checkpointing:
            raise ValueError(f"training.gradient_checkpointing: {type(pretrained).__name__} does not support it")
        kwargs = {"use_reentrant": False}
        if hasattr(pretrained, "activation_checkpointing_enable"):  # transformers >= 5.2x; older: the same, named so
            pretrained.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            pretrained.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for pretrained in outermost:  # inner models (a backbone) keep configs of their own
        if getattr(pretrained.config, "use_cache", None):
            pretrained.config.use_cache = False
    return sum(1 for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing)


def layer_groups(model: nn.Module) -> LayerGroups:
    """Parameter names per group. Norms and poolers above the blocks go with the head. Works for any
    transformers model with a base model (our classifier's `backbone`, BertForQuestionAnswering's `bert`)."""
    base_name = model.base_model_prefix
    blocks_name, blocks = find_blocks(model.base_model)
    groups = LayerGroups(blocks=[[] for _ in blocks])
    prefix = f"{base_name}.{blocks_name}."
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            index = int(name[len(prefix):].split(".", 1)[0])
            groups.blocks[index].append(name)
        elif name.startswith(f"{base_name}.") and any(h in name.lower() for h in EMBEDDING_HINTS):
            groups.embeddings.append(name)
        else:
            groups.head.append(name)
    return groups


def new_head_modules(model: nn.Module) -> list[str]:
    """Top-level modules outside the base model that own parameters of their own: the task head that
    a strategy adds (classifier, qa_outputs). A language-model head tied to the embeddings is not new."""
    base = {id(p) for p in model.base_model.parameters()}
    return [name for name, child in model.named_children()
            if name not in (model.base_model_prefix, "lm_head")  # an LM head is pretrained, not new
            and any(id(p) not in base for p in child.parameters())]


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def layer_count(config) -> int | None:
    """Transformer blocks a config declares (BERT-, GPT-2- and Llama-shaped), or None."""
    for key in LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def keep_blocks(base_model: nn.Module, keep: list[int], configs: list) -> None:
    """Truncate a pretrained model to the blocks in keep (a distillation student built from its teacher's
    layers), renumbered 0..len(keep)-1 so save_pretrained writes an ordinary checkpoint of that depth."""
    from torch import nn

    name, blocks = find_blocks(base_model)
    parent = base_model.get_submodule(name.rpartition(".")[0]) if "." in name else base_model
    kept = nn.ModuleList([blocks[i] for i in keep])
    for new_index, block in enumerate(kept):
        for module in block.modules():  # attention caches are keyed by the block's index
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(parent, name.rpartition(".")[2], kept)
    for config in configs:
        for key in LAYER_COUNT_KEYS:
            if isinstance(getattr(config, key, None), int):
                setattr(config, key, len(keep))
        if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (newer configs)
            config.layer_types = [config.layer_types[i] for i in keep]
