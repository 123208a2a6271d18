"""LoRA: the pretrained weights stay frozen; low-rank updates of the attention and MLP projections,
plus the new head, train. Outputs: a PEFT adapter folder and a merged model."""
from __future__ import annotations

from torch import nn

from tlscale.errors import ConfigError, require
from tlscale.strategies.base import STRATEGIES, Strategy

# Attention and MLP projections per architecture (module names as transformers defines them).
TARGET_MODULES = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
HEAD_MODULES = ["classifier"]  # the fresh head trains fully and is saved with the adapter


def default_targets(model_type: str) -> list[str]:
    if model_type not in TARGET_MODULES:
        raise ConfigError(f"strategy.target_modules: no default for model type '{model_type}'; list the module names "
                          f"to adapt (known defaults: {', '.join(sorted(TARGET_MODULES))})")
    return TARGET_MODULES[model_type]


@STRATEGIES.register("lora")
class Lora(Strategy):
    def apply(self, model: nn.Module) -> nn.Module:
        peft = require("peft", "qlora")
        spec = self.spec
        r = spec.r or 8
        targets = spec.target_modules or default_targets(model.config.model_type)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.backbone.named_modules()}
        unknown = sorted(set(targets) - present)
        if unknown:
            raise ConfigError(f"strategy.target_modules: {unknown} are not modules of this model; "
                              f"some that are: {sorted(present - {''})[:12]}")
        config = peft.LoraConfig(r=r, lora_alpha=spec.alpha or 2 * r, lora_dropout=(
            0.05 if spec.lora_dropout is None else spec.lora_dropout), target_modules=targets,
            bias=spec.bias or "none", modules_to_save=HEAD_MODULES,
            fan_in_fan_out=model.config.model_type == "gpt2")  # GPT-2 stores its projections transposed (Conv1D)
        return peft.get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
