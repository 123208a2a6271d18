"""LoRA and QLoRA: the pretrained weights stay frozen (QLoRA: in 4 or 8 bits); low-rank updates of the
attention and MLP projections, plus the new head, train. Outputs: a PEFT adapter folder and a merged model."""
from __future__ import annotations

from torch import nn

from tlscale.errors import ConfigError, require
from tlscale.models.layers import new_head_modules
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
        modules = {name.rsplit(".", 1)[-1]: module for name, module in model.base_model.named_modules()}
        unknown = sorted(set(targets) - set(modules))
        if unknown:
            raise ConfigError(f"strategy.target_modules: {unknown} are not modules of this model; "
                              f"some that are: {sorted(set(modules) - {''})[:12]}")
        # GPT-2 stores its projections transposed (Conv1D); quantized loading turns them into Linear.
        transposed = any(type(modules[t]).__name__ == "Conv1D" for t in targets)
        config = peft.LoraConfig(r=r, lora_alpha=spec.alpha or 2 * r, lora_dropout=(
            0.05 if spec.lora_dropout is None else spec.lora_dropout), target_modules=targets,
            bias=spec.bias or "none", fan_in_fan_out=transposed,
            modules_to_save=new_head_modules(model))  # the fresh head trains fully and is saved with the adapter
        return peft.get_peft_model(model, config)


@STRATEGIES.register("qlora")
class Qlora(Lora):
    """LoRA on a base loaded in 4-bit (NF4/FP4) or 8-bit by bitsandbytes."""

    def quantization(self) -> dict:
        from tlscale.models.quantization import compute_dtype

        spec = self.spec
        return {"bits": spec.bits or 4, "quant_type": spec.quant_type or "nf4",
                "double_quant": True if spec.double_quant is None else spec.double_quant,
                "dtype": compute_dtype(spec.compute_dtype or "auto")}

    def load_options(self) -> dict:
        from tlscale.models.quantization import bitsandbytes_config

        return {"quantization_config": bitsandbytes_config(**self.quantization())}

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        from tlscale.models.quantization import disable_cpu_repacking, is_quantized

        if not is_quantized(model):
            raise ConfigError("strategy.name: 'qlora' found no quantized layers in the loaded model; "
                              "build it with the strategy's load_options()")
        disable_cpu_repacking(model)  # before any eval forward can repack the 4-bit weights
        # fp32 norms/embeddings and input grads; checkpointing is a training option, not forced here
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().apply(model)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")
