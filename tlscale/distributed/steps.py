"""Step arithmetic that makes N processes (DDP or DeepSpeed) compute one process's optimizer step.

`training.batch_size` is the global batch: each rank takes its shard of every micro-batch, and each
rank's loss is scaled so that after the backend's averaging (over ranks, and DeepSpeed's division by
accumulation steps) the gradient is that of the mean loss over the whole global group.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


def usable_batches(n_batches: int, dist, training) -> int:
    """DeepSpeed counts micro-batches itself: every optimizer step must see exactly
    grad_accum_steps of them, so a ragged tail is dropped rather than miscounted."""
    if dist.backend == "deepspeed" and training.grad_accum_steps > 1:
        return n_batches - n_batches % training.grad_accum_steps
    return n_batches


def zero_missing_gradients(model, dist) -> None:
    """Trainable parameters a step did not reach (the heads of tasks absent from a multi-task step) get zero
    gradients: ZeRO's flat partitions always hold them, so every backend steps them alike (AdamW's momentum
    and weight decay move them, as in one optimizer over all heads). DeepSpeed holds its own."""
    if dist.backend == "deepspeed":
        return
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)


def loss_scale(accelerator, dist, training, global_weight: int) -> float:
    """Multiply each micro-batch's (mean loss x its weight) by this to get one process's gradient."""
    deepspeed_gas = training.grad_accum_steps if dist.backend == "deepspeed" else 1
    return accelerator.num_processes * deepspeed_gas / max(global_weight, 1)


@contextmanager
def micro_batch(accelerator, model, last: bool):
    """DeepSpeed steps only at the accumulation boundary; DDP reduces gradients once per step."""
    accelerator.sync_gradients = last
    replicated = accelerator.distributed_type.name in ("MULTI_CPU", "MULTI_GPU")
    try:
        with accelerator.no_sync(model) if replicated and not last else nullcontext():
            yield
    finally:
        accelerator.sync_gradients = True


def sum_over_processes(accelerator, loss_sum: float, count: int) -> tuple[float, int]:
    """Rank 0 keeps the totals over all ranks, the others zero (what the next log reduces is unchanged)."""
    if accelerator.num_processes == 1:
        return loss_sum, count
    totals = _reduce(accelerator, [loss_sum, float(count)])
    if accelerator.is_main_process:
        return totals[0].item(), int(totals[1].item())
    return 0.0, 0


def mean_over_processes(accelerator, loss_sum: float, count: int) -> float:
    if accelerator.num_processes == 1:
        return loss_sum / max(count, 1)
    totals = _reduce(accelerator, [loss_sum, float(count)])
    return (totals[0] / totals[1].clamp(min=1)).item()


def agree(accelerator, flag: bool) -> bool:
    """A stop request on any rank stops all of them at the same step (a save needs every rank)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(_reduce(accelerator, [1.0 if flag else 0.0]).item() > 0)


def _reduce(accelerator, values: list[float]) -> torch.Tensor:
    return accelerator.reduce(torch.tensor(values, device=accelerator.device), reduction="sum")
