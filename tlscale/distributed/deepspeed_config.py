"""The DeepSpeed JSON for a spec: derived from it, optionally merged with the user's own file.

Values the spec owns (batch sizes, accumulation, clipping, precision, ZeRO stage and offload) are
derived here; a user file may repeat them or say "auto", but a different value is an error rather
than a silent override.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlscale.errors import ConfigError
from tlscale.spec.schema import JobSpec

NOT_OURS = ("optimizer", "scheduler")  # tlscale builds these from training.* (discriminative LRs included)


def derived_config(spec: JobSpec) -> dict:
    dist, training = spec.distributed, spec.training
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if dist.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if dist.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # save_pretrained gets full weights
    return {
        "train_micro_batch_size_per_gpu": training.batch_size // spec.world_size,
        "gradient_accumulation_steps": training.grad_accum_steps,
        "train_batch_size": training.batch_size * training.grad_accum_steps,
        "gradient_clipping": training.max_grad_norm or 0.0,
        "bf16": {"enabled": training.mixed_precision == "bf16"},
        "fp16": {"enabled": training.mixed_precision == "fp16"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


SPEC_FIELD = {
    "train_micro_batch_size_per_gpu": "training.batch_size / the number of processes",
    "gradient_accumulation_steps": "training.grad_accum_steps",
    "train_batch_size": "training.batch_size x training.grad_accum_steps",
    "gradient_clipping": "training.max_grad_norm",
    "bf16.enabled": "training.mixed_precision",
    "fp16.enabled": "training.mixed_precision",
    "zero_optimization.stage": "distributed.zero_stage",
    "zero_optimization.offload_optimizer.device": "distributed.offload_optimizer",
    "zero_optimization.offload_param.device": "distributed.offload_params",
}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_user_config(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"distributed.deepspeed_config: cannot read '{path}' ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: distributed.deepspeed_config is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: distributed.deepspeed_config must hold a JSON object")
    return value


def deepspeed_config(spec: JobSpec) -> dict:
    derived = derived_config(spec)
    path = spec.distributed.deepspeed_config
    if path is None:
        return derived
    user = read_user_config(path)
    problems = [f"{path}: '{key}' is set, but tlscale builds the {key} from training.* (lr, scheduler, warmup); "
                "remove it from the JSON" for key in NOT_OURS if key in user]
    ours, theirs = _flatten(derived), _flatten(user)
    for key, field in SPEC_FIELD.items():
        if key in theirs and theirs[key] != "auto":
            expected = ours.get(key, "none" if key.endswith(".device") else None)
            if theirs[key] != expected:
                problems.append(f"{path}: '{key}' is {theirs[key]!r} but the spec gives {expected!r} ({field}); "
                                "change the spec or remove the key from the JSON")
    if problems:
        raise ConfigError(problems)
    return _deep_merge(user, derived)  # no conflicts left: the user's extra keys plus ours
