"""k-bit bases for QLoRA: bitsandbytes load options, the CPU repacking trap, dequantized merges, footprints.

bitsandbytes is imported only here, and only when a quantized strategy runs.
"""
from __future__ import annotations

import torch
from torch import nn

from tlscale.errors import DependencyError, require

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(name: str) -> torch.dtype:
    """auto: bfloat16 on a GPU that has it, else float32 (bf16 matmuls on CPU are slow and lossy)."""
    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[name]


def bitsandbytes_config(bits: int, quant_type: str, double_quant: bool, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    check_bitsandbytes()
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_quant_storage=torch.uint8)


def check_bitsandbytes() -> None:
    """Fail at validation, not mid-run, where bitsandbytes is missing or has no usable backend here."""
    bnb = require("bitsandbytes", "qlora")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        from bitsandbytes import functional

        packed, state = functional.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
        functional.dequantize_4bit(packed, state)
    except Exception as exc:  # noqa: BLE001  (any failure means: no working kernels on this machine)
        raise DependencyError(
            f"strategy.name: 'qlora' needs a working bitsandbytes backend; bitsandbytes {bnb.__version__} "
            f"failed a 4-bit round trip on {device}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def disable_cpu_repacking(model: nn.Module) -> int:
    """On CPUs with AVX512-BF16, the first no-grad eval forward of a Linear4bit repacks its weights in
    place into an inference layout; training afterwards silently degrades and merges come out wrong.
    Turning the fast path off on every 4-bit layer keeps the trained layout (see PLATFORM-NOTES)."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def is_quantized(model: nn.Module) -> bool:
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def dequantize_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace every bitsandbytes layer by the plain layer the architecture defines (nn.Linear, or
    GPT-2's transposed Conv1D, which quantized loading had turned into a Linear), holding the
    dequantized weight. Merging LoRA into these gives exactly the function the adapter was trained on;
    merging into the 4-bit layers would quantize the sum again and lose the update's precision."""
    import bitsandbytes as bnb
    from bitsandbytes import functional

    architecture = _architecture_modules(model)
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                weight = _dequantize_8bit(child)
            else:
                continue
            path = f"{parent_name}.{name}" if parent_name else name
            setattr(parent, name, _plain_layer(weight.to(dtype), child.bias, type(architecture.get(path)).__name__))
            replaced += 1
    return replaced


def _architecture_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules as its class builds them (on the meta device: no memory, no weights)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    with torch.device("meta"):
        return dict(type(model)(config).named_modules())


def _plain_layer(weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> nn.Module:
    out_features, in_features = weight.shape
    if kind == "Conv1D":
        from transformers.pytorch_utils import Conv1D

        layer = Conv1D(out_features, in_features).to(device=weight.device, dtype=weight.dtype)
        weight = weight.t()
    else:
        layer = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.to(weight.dtype))
    return layer.requires_grad_(False)


def _dequantize_8bit(layer) -> torch.Tensor:
    weight = layer.weight
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = layer.state.SCB
    return weight.data.float() * scales.float().unsqueeze(1) / 127.0


def unquantized_numel(param: torch.Tensor) -> int:
    """Elements a parameter stands for: a packed 4-bit tensor holds two per byte."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return getattr(param, "ds_numel", param.numel())


def footprint_bytes(model: nn.Module) -> int:
    """Bytes the weights occupy now: parameters, buffers, and 4-bit quantization constants."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        if state is None:
            continue
        total += state.absmax.numel() * state.absmax.element_size()
        if getattr(state, "state2", None) is not None:  # double quantization: constants of the constants
            total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def footprint_unquantized_bytes(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the same model takes with every weight in `dtype` (what quantization is compared to)."""
    size = torch.tensor([], dtype=dtype).element_size()
    params = {id(p): unquantized_numel(p) for p in model.parameters()}
    return sum(params.values()) * size + sum(b.numel() * b.element_size() for b in model.buffers())


def describe(bits: int, quant_type: str, double_quant: bool, dtype: torch.dtype) -> str:
    if bits == 8:
        return "8-bit (LLM.int8)"
    return f"4-bit {quant_type}{' + double quantization' if double_quant else ''}, compute {str(dtype).removeprefix('torch.')}"


__all__ = ["DTYPES", "bitsandbytes_config", "check_bitsandbytes", "compute_dtype", "dequantize_linears", "describe",
           "disable_cpu_repacking", "footprint_bytes", "footprint_unquantized_bytes", "is_quantized",
           "unquantized_numel"]
