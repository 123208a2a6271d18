"""Accelerator keyword arguments for a spec: device, process group backend, DeepSpeed plugin."""
from __future__ import annotations

import os

import torch

from tlscale.errors import require
from tlscale.spec.schema import JobSpec


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def accelerator_kwargs(spec: JobSpec) -> dict:
    from accelerate.utils import InitProcessGroupKwargs

    on_cpu = not torch.cuda.is_available()
    deepspeed = spec.distributed.backend == "deepspeed"
    # cpu=True is what makes DDP run on CPU, but Accelerate silently drops DeepSpeed when it is set:
    # DeepSpeed finds the CPU by itself.
    kwargs: dict = {"mixed_precision": spec.training.mixed_precision, "cpu": on_cpu and not deepspeed}
    handlers = []
    if world_size() > 1 and on_cpu:
        # Without an explicit gloo handler Accelerate sees one process on CPU and DeepSpeed's
        # batch-size check fails (see PLATFORM-NOTES); with it DDP and ZeRO run over gloo.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if not _task_class(spec).uses_every_parameter:  # multi_task: the other tasks' heads get no gradient
        from accelerate.utils import DistributedDataParallelKwargs

        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    if handlers:
        kwargs["kwargs_handlers"] = handlers
    if deepspeed:
        require("deepspeed", "deepspeed")
        from accelerate.utils import DeepSpeedPlugin

        from tlscale.distributed.deepspeed_config import deepspeed_config

        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config(spec))
    return kwargs


def _task_class(spec: JobSpec):
    from tlscale.tasks import TASKS

    return TASKS.get(spec.task, field="task")


def check_backend(accelerator, spec: JobSpec) -> None:
    """Never train silently with another backend than the spec asked for."""
    from accelerate.utils import DistributedType

    expected = {"deepspeed": {DistributedType.DEEPSPEED},
                "ddp": {DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.NO}}
    wanted = expected.get(spec.distributed.backend)
    if wanted and accelerator.distributed_type not in wanted:
        raise RuntimeError(f"distributed.backend is '{spec.distributed.backend}' but Accelerate set up "
                           f"{accelerator.distributed_type}; refusing to train with the wrong backend")


def fresh_accelerator_state() -> None:
    """Accelerate keeps process-wide singletons; a second in-process run (notebooks, benchmarks, tests)
    with other settings would fail on them. Launched processes run once and keep theirs. (Accelerate has
    no public reset; this is the one its own tests use.)"""
    from accelerate.state import AcceleratorState, GradientState

    if world_size() == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
