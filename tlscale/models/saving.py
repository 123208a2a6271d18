"""A trained model on disk: a save_pretrained folder plain transformers loads (or a PEFT adapter beside it),
with the tokenizer, label map and spec, written to a temporary name and renamed into place."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from tlscale.files import publish_dir, write_json_atomic


def save_model(accelerator, model, tokenizer, label_names: list[str], spec_yaml: str, final: Path) -> None:
    """A save_pretrained folder that plain transformers loads, plus our label map and spec.
    Under ZeRO-3 every rank takes part in gathering the full weights; the main process writes.
    A LoRA model also leaves its PEFT adapter folder beside it (FINAL-adapter), and FINAL is merged.
    Under ZeRO-3 the merge needs the whole base, so the launching process does it from the adapter."""
    unwrapped = accelerator.unwrap_model(model)
    zero3 = _zero_stage(accelerator) == 3
    state_dict = accelerator.get_state_dict(model) if zero3 or not hasattr(unwrapped, "peft_config") else None
    if hasattr(unwrapped, "peft_config"):
        if accelerator.is_main_process:
            save_adapter(unwrapped, tokenizer, label_names, spec_yaml, adapter_dir(final), state_dict)
            if not zero3:
                merged = merged_copy(unwrapped)
                write_model(merged, merged.state_dict(), tokenizer, label_names, spec_yaml, final)
        accelerator.wait_for_everyone()
        return
    if accelerator.is_main_process:
        write_model(unwrapped, state_dict, tokenizer, label_names, spec_yaml, final)
    accelerator.wait_for_everyone()


def load_model_weights(model, folder: Path) -> None:
    """Weights save_model wrote, loaded into the live model (its PEFT adapter for a LoRA model)."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from tlscale.errors import require

        set_peft_model_state_dict = require("peft").set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(str(adapter_dir(folder) / "adapter_model.safetensors")))
    else:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)


def save_adapter(peft_model, tokenizer, label_names, spec_yaml: str, path: Path, state_dict=None) -> None:
    """A PEFT adapter folder that is self-contained for tlscale (tokenizer, labels, spec beside it).
    state_dict: the gathered full weights under ZeRO-3, where the live parameters are empty shards
    (PeftModel.save_pretrained keeps only the adapter's entries of it)."""
    write_model(peft_model, state_dict, tokenizer, label_names, spec_yaml, path)


def _zero_stage(accelerator) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


def merged_copy(peft_model):
    """The adapter folded into a copy of the base. A k-bit base is dequantized first and the adapter
    re-applied on it, so the merged weights are the function the adapter was trained on (merging into
    the 4-bit layers would quantize the sum again and lose most of the update)."""
    from tlscale.errors import require

    peft = require("peft")
    get_peft_model, get_peft_model_state_dict = peft.get_peft_model, peft.get_peft_model_state_dict
    set_peft_model_state_dict = peft.set_peft_model_state_dict

    from tlscale.models.quantization import dequantize_linears, is_quantized

    if not is_quantized(peft_model):
        return copy.deepcopy(peft_model).merge_and_unload()
    adapter = get_peft_model_state_dict(peft_model)
    config = copy.deepcopy(peft_model.peft_config["default"])
    base = copy.deepcopy(peft_model).unload()
    dequantize_linears(base, _compute_dtype(peft_model))
    rebuilt = get_peft_model(base, config)
    set_peft_model_state_dict(rebuilt, adapter)
    merged = rebuilt.merge_and_unload()
    # Plain weights now: without this the saved config.json keeps the base's quantization_config, and
    # from_pretrained would take the dequantized weights for packed 4-bit ones (a broken model).
    merged.hf_quantizer = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    return merged


def _compute_dtype(model):
    import torch

    for module in model.modules():
        dtype = getattr(module, "compute_dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
    return torch.float32


def adapter_dir(final: Path) -> Path:
    return final.with_name(f"{final.name}-adapter")


def write_model(model, state_dict, tokenizer, label_names, spec_yaml, final: Path) -> None:
    """A save_pretrained folder (a model, or a PEFT adapter) with the tokenizer, labels and spec beside it."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if label_names is not None:
            write_json_atomic(tmp / "labels.json", {"labels": label_names})
        (tmp / "tlscale_spec.yaml").write_text(spec_yaml)

    write_dir(final, write)


def write_dir(final: Path, write) -> None:
    """write(tmp) fills a temporary folder beside final, which then replaces final in one rename."""
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    publish_dir(tmp, final)
