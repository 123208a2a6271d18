"""Check a saved model after writing it: every tensor present and non-empty, reloadable by plain
transformers, and giving the in-memory model's loss on a fixed batch. This catches the classic
ZeRO-3 failure (empty or partial weights in the saved folder) at the end of the run, not in production.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch

from tlscale.errors import RunStateError

FIXED_BATCH = 8


def fixed_batch(task, eval_set, pad_id: int) -> dict:
    batch = task.collate(eval_set, list(range(min(FIXED_BATCH, len(eval_set)))), pad_id)
    batch.pop("index")
    return batch


@torch.no_grad()
def batch_loss(model, batch: dict, device="cpu", autocast: torch.dtype | None = None) -> float:
    was_training = model.training
    model.eval()
    with torch.autocast(torch.device(device).type, dtype=autocast, enabled=autocast is not None):
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss


@contextmanager
def as_a_fresh_process():
    """Inside a ZeRO-3 run transformers builds every model through deepspeed.zero.Init (partitioned, and on
    the meta device it cannot build at all); the saved folder is checked as a fresh process would load it."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def verify_saved_model(model_dir: Path, batch: dict, expected_loss: float,
                       auto_class: str = "AutoModelForSequenceClassification", mixed_precision: str = "no") -> dict:
    with as_a_fresh_process():
        return _verify(model_dir, batch, expected_loss, auto_class, mixed_precision)


def _verify(model_dir: Path, batch: dict, expected_loss: float, auto_class: str, mixed_precision: str) -> dict:
    """mixed_precision: the in-memory loss came from a model under autocast (Accelerate wraps its forward), so
    the reloaded one runs under bf16 autocast too, compared at bf16's precision (a broken save is off by far
    more); in fp32 both agree to 1e-4."""
    import transformers
    from safetensors import safe_open
    from transformers import AutoConfig

    from tlscale.models.pooled_classifier import PooledSequenceClassifier

    problems = []
    config = AutoConfig.from_pretrained(model_dir)
    loader = getattr(transformers, auto_class)
    with torch.device("meta"):
        skeleton = (PooledSequenceClassifier(config) if config.architectures == ["PooledSequenceClassifier"]
                    else loader.from_config(config))
    expected, seen = {}, set()
    for key, tensor in skeleton.state_dict(keep_vars=True).items():  # tied weights (LM heads) are saved once
        if id(tensor) not in seen:
            seen.add(id(tensor))
            expected[key] = tensor
    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            tensors.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
    missing = sorted(set(expected) - set(tensors))
    empty = sorted(key for key, shape in tensors.items() if math.prod(shape) == 0)
    wrong = sorted(key for key in set(expected) & set(tensors) if list(expected[key].shape) != list(tensors[key]))
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if empty:
        problems.append(f"{len(empty)} empty tensors, e.g. {empty[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} tensors with the wrong shape, e.g. {wrong[:3]}")
    reloaded_loss = None
    if not problems:
        model = loader.from_pretrained(model_dir, trust_remote_code=True)
        mixed = mixed_precision != "no"
        reloaded_loss = batch_loss(model, batch, autocast=torch.bfloat16 if mixed else None)
        if abs(reloaded_loss - expected_loss) > (2e-2 if mixed else 1e-4) * max(1.0, abs(expected_loss)):
            problems.append(f"reloaded loss {reloaded_loss:.6f} != in-memory loss {expected_loss:.6f} on a fixed batch")
    if problems:
        raise RunStateError([f"{model_dir}: saved model failed verification: {p}" for p in problems])
    return {"tensors": len(tensors), "fixed_batch_loss": expected_loss, "reloaded_loss": reloaded_loss}


def verify_adapter(adapter_dir: Path) -> dict:
    """A PEFT adapter folder holds non-empty LoRA A/B matrices (the classic ZeRO-3 failure: saved empty)."""
    from safetensors import safe_open

    file = Path(adapter_dir) / "adapter_model.safetensors"
    if not file.is_file():
        raise RunStateError(f"{adapter_dir}: adapter failed verification: no adapter_model.safetensors")
    with safe_open(str(file), "pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    empty = sorted(key for key, shape in shapes.items() if math.prod(shape) == 0)
    pairs = sum("lora_A" in key for key in shapes), sum("lora_B" in key for key in shapes)
    problems = [f"{len(empty)} empty tensors, e.g. {empty[:3]}"] if empty else []
    if pairs[0] == 0 or pairs[0] != pairs[1]:
        problems.append(f"expected matching lora_A/lora_B tensors, found {pairs[0]} A and {pairs[1]} B")
    if problems:
        raise RunStateError([f"{adapter_dir}: adapter failed verification: {p}" for p in problems])
    return {"tensors": len(shapes), "lora_pairs": pairs[0]}
