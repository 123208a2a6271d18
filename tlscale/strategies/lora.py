"""LoRA and QLoRA: the pretrained weights stay frozen (QLoRA: in 4 or 8 bits); low-rank updates of the
attention and MLP projections, plus the new head, train. Outputs: a PEFT adapter folder and a merged model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt, model_validator

from tlscale.errors import ConfigError, require
from tlscale.models.layers import new_head_modules
from tlscale.spec.schema import ModelSpec, StrategySpec
from tlscale.strategies.base import STRATEGIES, Strategy

if TYPE_CHECKING:  # torch loads when a strategy runs, not when a spec is checked
    from torch import nn

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


def _adaptable(module: nn.Module) -> bool:
    """Layers PEFT's LoRA can wrap (bitsandbytes' quantized layers subclass nn.Linear; transformers' Conv1D is
    GPT-2's transposed Linear)."""
    from torch import nn

    return isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)) or \
        type(module).__name__ == "Conv1D"


def resolve_targets(spec: StrategySpec, backbone: nn.Module, model_type: str) -> tuple[list[str], list[nn.Module]]:
    """The spec's target modules (or the architecture's defaults) and the backbone modules they name, matched as
    PEFT matches them (a module whose name is the target or ends in '.target'). Every target must name at least
    one module, and only layers LoRA can adapt (PEFT raises on a block such as BertAttention)."""
    targets = list(spec.target_modules or default_targets(model_type))
    modules = [(name, module) for name, module in backbone.named_modules() if name]
    adaptable = sorted({name.rsplit(".", 1)[-1] for name, module in modules if _adaptable(module)})
    matched, unknown, blocks = [], [], {}
    for target in targets:
        hits = [module for name, module in modules if name == target or name.endswith("." + target)]
        if not hits:
            unknown.append(target)
        others = sorted({type(module).__name__ for module in hits if not _adaptable(module)})
        if others:
            blocks[target] = others
        matched += hits
    if unknown:
        raise ConfigError(f"strategy.target_modules: {unknown} are not modules of this model ('{model_type}'); "
                          f"layers LoRA can adapt here: {_short(adaptable)}")
    if blocks:
        named = "; ".join(f"'{target}' names {', '.join(kinds)}" for target, kinds in blocks.items())
        raise ConfigError(f"strategy.target_modules: {named}, which LoRA cannot adapt (it adapts linear, embedding "
                          f"and convolution layers); layers LoRA can adapt here: {_short(adaptable)}")
    return targets, matched


def _short(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f" ... ({len(names) - most} more)" if len(names) > most else "")


def model_skeleton(model_spec: ModelSpec) -> nn.Module | None:
    """The backbone (what model.base_model is once loaded) built from its config on the meta device: module
    names and types without reading or allocating any weight. None when the config names no class AutoModel
    builds (training then checks the targets on the loaded model)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    from tlscale.models.loading import _load_error, resolve_model_path

    path = resolve_model_path(model_spec.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    try:
        with init_empty_weights():
            return AutoModel.from_config(config)
    except Exception:  # noqa: BLE001  (a best-effort early check; training builds the real model)
        return None


class LoraOptions(StrategySpec):
    r: PositiveInt | None = Field(None, description="lora: rank of the update matrices (default 8).")
    alpha: float | None = Field(None, gt=0, description="lora: scaling numerator, update x alpha/r (default 2r).")
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="lora: dropout on the adapter input (0.05).")
    target_modules: list[str] | None = Field(
        None, description="lora: module names to adapt (default: attention and MLP projections of the architecture)."
    )
    bias: Literal["none", "all", "lora_only"] | None = Field(None, description="lora: which biases train (none).")
    base_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="lora: dtype of the frozen base weights (default float32); bfloat16 halves their memory "
        "while the adapters and the new head keep training in float32 (needs mixed_precision bf16).")


class QloraOptions(LoraOptions):
    bits: Literal[4, 8] | None = Field(None, description="qlora: load the frozen base in 4-bit (default) or 8-bit.")
    quant_type: Literal["nf4", "fp4"] | None = Field(None, description="qlora 4-bit: data type (default nf4).")
    double_quant: bool | None = Field(None, description="qlora 4-bit: quantize the quantization constants "
                                      "(default true).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="qlora 4-bit: dtype of the dequantized matmuls (auto: bfloat16 on a GPU with it, else "
        "float32).")

    @model_validator(mode="after")
    def _four_bit_options(self) -> QloraOptions:
        if self.base_dtype is not None:
            raise ValueError("base_dtype is for strategy 'lora'; qlora quantizes the base (its matmuls run in "
                             f"compute_dtype), found base_dtype '{self.base_dtype}'")
        four_bit_only = [k for k in ("quant_type", "double_quant", "compute_dtype") if getattr(self, k) is not None]
        if self.bits == 8 and four_bit_only:
            raise ValueError(f"{', '.join(four_bit_only)} only apply to 4-bit loading, found bits=8")
        return self


@STRATEGIES.register("lora")
class Lora(Strategy):
    options = LoraOptions

    def check(self, spec) -> None:
        super().check(spec)  # qlora: bitsandbytes present and working here
        self.check_targets(spec.model)

    def check_targets(self, model_spec: ModelSpec) -> None:
        """`tlscale validate`: the target modules against the model's skeleton, before any weight is read."""
        skeleton = model_skeleton(model_spec)
        if skeleton is not None:
            resolve_targets(self.spec, skeleton, skeleton.config.model_type)

    def load_options(self) -> dict:
        from tlscale.models.quantization import DTYPES

        return {"dtype": DTYPES[self.spec.base_dtype]} if self.spec.base_dtype else {}

    def apply(self, model: nn.Module) -> nn.Module:
        import torch

        peft = require("peft")
        spec = self.spec
        r = spec.r or 8
        targets, matched = resolve_targets(spec, model.base_model, model.config.model_type)
        # GPT-2 stores its projections transposed (Conv1D); quantized loading turns them into Linear.
        transposed = any(type(module).__name__ == "Conv1D" for module in matched)
        config = peft.LoraConfig(r=r, lora_alpha=spec.alpha or 2 * r, lora_dropout=(
            0.05 if spec.lora_dropout is None else spec.lora_dropout), target_modules=targets,
            bias=spec.bias or "none", fan_in_fan_out=transposed,
            modules_to_save=new_head_modules(model))  # the fresh head trains fully and is saved with the adapter
        model = peft.get_peft_model(model, config)
        for param in model.parameters():  # a half-precision base: what trains keeps float32 (adapters and head)
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        return model


@STRATEGIES.register("qlora")
class Qlora(Lora):
    """LoRA on a base loaded in 4-bit (NF4/FP4) or 8-bit by bitsandbytes."""

    options = QloraOptions

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
        prepare_model_for_kbit_training = require("peft").prepare_model_for_kbit_training

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
