"""Checkpoints are directories written to a temporary name and renamed: a crash mid-save
never leaves a broken 'latest'. Training state = Accelerate's save_state + trainer_state.json."""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlscale.errors import RunStateError
from tlscale.files import publish_dir, write_json_atomic, write_jsonl_atomic  # noqa: F401  (re-exported)

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    epoch_times_s: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    samples_seen: int = 0
    running_loss: float = 0.0  # loss summed over all ranks since the last logged row
    running_count: int = 0
    world_size: int = 1
    backend: str = "none"


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def save_training_state(accelerator, output_dir: Path, state: TrainState, keep: int) -> Path:
    """Every rank writes its part (DeepSpeed partitions, RNG states) into a temporary folder;
    the main process publishes it only once all ranks are done."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, asdict(state))
        publish_dir(tmp, final)
        write_json_atomic(root / "latest.json", {"checkpoint": final.name, "step": state.step})
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = checkpoint_root(output_dir) / "latest.json"
    if not pointer.is_file():
        return None
    path = checkpoint_root(output_dir) / json.loads(pointer.read_text())["checkpoint"]
    if not (path / STATE_FILE).is_file():
        raise RunStateError(f"{path}: the latest checkpoint is incomplete (no {STATE_FILE})")
    return path


def check_resumable(checkpoint: Path, backend: str, world: int) -> None:
    """DDP and single-process checkpoints hold full states and resume on any number of processes;
    DeepSpeed's hold per-rank partitions and resume only where they were written."""
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    saved_world, saved_backend = saved.get("world_size", 1), saved.get("backend", "none")
    if "deepspeed" in (saved_backend, backend) and (saved_backend, saved_world) != (backend, world):
        raise RunStateError(
            f"{checkpoint}: saved by backend '{saved_backend}' on {saved_world} process(es); this run is "
            f"'{backend}' on {world}. DeepSpeed checkpoints hold per-rank partitions of the optimizer "
            "state and resume only with the same backend and num_processes. Resume with those settings, "
            "or start a new run from the saved model folder"
        )


def load_training_state(accelerator, checkpoint: Path) -> TrainState:
    accelerator.load_state(str(checkpoint))
    return TrainState(**json.loads((checkpoint / STATE_FILE).read_text()))


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
    return rebuilt.merge_and_unload()


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

    _write_dir(final, write)


def _write_dir(final: Path, write) -> None:
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    publish_dir(tmp, final)
