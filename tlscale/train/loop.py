"""The one training loop. It reads top to bottom: build, (resume), train, evaluate, save.

The same function runs in-process, in each process of a local multi-process launch, and (later)
inside Ray workers: Accelerate decides what "the model" and "a step" mean (plain, DDP, DeepSpeed).
"""
from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tlscale.errors import ConfigError, TlscaleError
from tlscale.spec import JobSpec
from tlscale.train.checkpoints import (
    TrainState,
    latest_checkpoint,
    load_training_state,
    save_model,
    save_training_state,
)
from tlscale.train.run_dir import RunDir


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict
    interrupted: bool = False


class TrainingDiverged(TlscaleError):
    """The loss became NaN or infinite: a user setting (learning rate, data), not a crash."""


class _Preemption:
    """SIGTERM (preemption) asks the loop to checkpoint at the next step and stop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Reporter:
    """Where progress goes besides the run's own files: nowhere for local runs; the Ray runner
    reports metrics and checkpoints to Ray Train. Every rank calls every method at the same step."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def checkpoint(self, path: Path, step: int) -> None:
        pass

    def preempted(self, step: int) -> bool:
        """True once when the scheduler announces a preemption: checkpoint now, keep training."""
        return False

    def describe(self) -> dict:
        """Extra entries for metrics.json (e.g. where the workers ran)."""
        return {}


def train(spec: JobSpec, *, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None,
          show_progress: bool = True, launched: bool = False, resume_from: Path | None = None,
          reporter: Reporter | None = None) -> RunResult:
    """In this process: claim the run folder, train, publish metrics.json last (the run is complete once it
    exists). launched: a worker of a run whose parent holds the claim and publishes the metrics.
    resume_from: a checkpoint folder to continue from (Ray hands back the latest reported one)."""
    if launched:
        return _train(spec, resume, stop_after_steps, show_progress, launched, resume_from, reporter)
    from tlscale.run_folder import claim

    with claim(spec.output_dir, resume=resume, overwrite=overwrite) as run_claim:
        run = RunDir(spec.output_dir)
        if resume and run.pending_metrics.is_file() and run.model_dir.is_dir():
            result = RunResult(run.path, run.publish_pending_metrics())  # killed while finishing: finish now
        else:
            result = _train(spec, resume, stop_after_steps, show_progress, launched, resume_from, reporter)
        if not result.interrupted:
            run_claim.succeeded()
    return result


def _train(spec: JobSpec, resume: bool, stop_after_steps: int | None, show_progress: bool, launched: bool,
           resume_from: Path | None, reporter: Reporter | None) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler
    from transformers.utils import logging as hf_logging

    from tlscale.data import length_grouped_batches
    from tlscale.data.batching import shard_global_batches, shuffled_batches
    from tlscale.distributed.accelerate_setup import accelerator_kwargs, check_backend
    from tlscale.models import load_tokenizer
    from tlscale.strategies import build_strategy, count_parameters, parameter_groups
    from tlscale.strategies.feature_cache import FeatureCache
    from tlscale.tasks import build_task
    from tlscale.train.tracking import trackers_for
    from tlscale.train.verify import batch_loss, fixed_batch, verify_adapter, verify_saved_model

    hf_logging.disable_progress_bar()  # per-shard load/save bars drown our own progress bar
    training, dist = spec.training, spec.distributed
    reporter = reporter or Reporter()
    if training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("training.mixed_precision: fp16 needs a CUDA GPU, none found; use 'bf16' or 'no' on CPU")

    run = RunDir(spec.output_dir)  # claimed (locked, settled for --resume/--overwrite) before we got here

    # --- data ------------------------------------------------------------------------------------
    set_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    task = build_task(spec)
    data = task.prepare(tokenizer)
    train_set, eval_set = data.train, data.eval
    pad_id = tokenizer.pad_token_id

    # --- model and strategy, built before the Accelerator: once a ZeRO-3 plugin exists, transformers
    # builds every model partitioned (zero.Init), which our fresh head cannot be initialised under.
    # DeepSpeed partitions the finished model in prepare() instead.
    set_seed(spec.seed)  # the new head's initialisation depends on nothing that ran before
    strategy = build_strategy(spec.strategy)
    model = task.build_model(data, strategy.load_options())
    memory = memory_report(model)
    model = strategy.apply(model)

    # --- the Accelerator: plain, DDP or DeepSpeed ----------------------------------------------
    _fresh_accelerator_state()
    accelerator = Accelerator(**accelerator_kwargs(spec), log_with=trackers_for(run.path, training.tensorboard),
                              project_dir=str(run.path))
    check_backend(accelerator, spec)
    rank, world = accelerator.process_index, accelerator.num_processes
    if world != spec.world_size:
        raise ConfigError(f"the spec asks for {spec.world_size} process(es) but {world} are running")
    if accelerator.is_main_process:
        run.create(spec)
    else:
        run.remember(spec)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, training, spec.strategy, strategy.unfreezes_later),
                                  lr=training.lr,
                                  fused=dist.backend != "deepspeed")  # one kernel per step (Trainer's default too)
    full, tail = divmod(len(train_set), training.batch_size)
    batches_per_epoch = _usable_batches(full + (tail >= world), dist, training)
    steps_per_epoch = math.ceil(batches_per_epoch / training.grad_accum_steps)
    total_steps = steps_per_epoch * training.epochs
    if training.max_steps:
        total_steps = min(total_steps, training.max_steps)
    scheduler = get_scheduler(training.scheduler, optimizer, num_warmup_steps=int(training.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    # The scheduler stays ours: prepared, Accelerate steps it once per process (DDP) and DeepSpeed's
    # engine steps it again (both seen in the LR log). Our batch size is global and we step it once
    # per optimizer step; registering it keeps its state in checkpoints.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.init_trackers("tensorboard", config={"strategy": spec.strategy.name, "lr": training.lr,
                                                     "batch_size": training.batch_size, "seed": spec.seed,
                                                     "world_size": world})
    state = TrainState(world_size=world, backend=dist.backend)
    checkpoint = resume_from or (latest_checkpoint(run.path) if resume else None)
    resumed_from_step = None
    if checkpoint is not None:
        state = _resume(accelerator, checkpoint, dist, world)
        resumed_from_step = state.step
        accelerator.print(f"resumed from {checkpoint} (step {state.step})")
    elif resume:
        accelerator.print(f"no checkpoint in {run.path / 'checkpoints'}; starting from step 0")
    if resume and accelerator.is_main_process:
        run.forget_logs_after(state.step)  # rows logged after the checkpoint will be logged again
    raw_model = accelerator.unwrap_model(model)
    strategy.on_step(raw_model, state.step, state.epoch, steps_per_epoch)
    cached = strategy.caches_features and task.caches_features
    train_cache = FeatureCache(len(train_set), spec.strategy.cache_features) if cached else None
    eval_cache = FeatureCache(len(eval_set)) if cached else None
    accelerator.print(f"{spec.strategy.name}: {trainable:,} trainable of {total:,} parameters "
                      f"({100 * trainable / max(total, 1):.2f}%), weights {memory['weights_mb']:,.1f} MB"
                      f"{' (fp32: %.1f MB)' % memory['weights_fp32_mb'] if memory['quantized'] else ''}; "
                      f"{len(train_set)} train / {len(eval_set)} eval examples, {total_steps} steps, "
                      f"{world} process(es), {accelerator.distributed_type.value}")

    def evaluate(tag: str) -> dict:
        return task.evaluate(accelerator, raw_model, data, run, pad_id, eval_cache,
                                   write_files=(tag == "final"))

    # --- the loop ------------------------------------------------------------------------------
    lengths = [len(ids) for ids in train_set.input_ids]
    progress = tqdm(total=total_steps, initial=state.step, disable=not (show_progress and accelerator.is_main_process),
                    desc="train", dynamic_ncols=True)
    interrupted = False
    model.train()
    with _Preemption() as preemption:
        while state.epoch < training.epochs and state.step < total_steps:
            epoch_seed = spec.seed * 1000 + state.epoch
            batches = (length_grouped_batches(lengths, training.batch_size, epoch_seed) if training.group_by_length
                       else shuffled_batches(len(train_set), training.batch_size, epoch_seed))
            batches = [b for b in batches if len(b) >= world][:batches_per_epoch]  # every rank needs an example
            epoch_start, excluded, time_before = time.perf_counter(), 0.0, state.train_time_s  # excluded: evals, saves
            running_loss, running_count = state.running_loss, state.running_count  # carried over a resume
            state.running_loss, state.running_count = 0.0, 0
            position = state.batches_in_epoch
            while position < len(batches) and state.step < total_steps:
                group = batches[position:position + training.grad_accum_steps]
                position += len(group)
                group_size = sum(len(indices) for indices in group)
                group_weight = sum(task.weight(train_set, indices) for indices in group)
                local = [shard_global_batches(indices, rank, world) for indices in group]
                step_loss = _forward_backward(accelerator, model, task, train_set, local, group_weight, pad_id,
                                              train_cache, deepspeed_gas=_ds_gas(dist, training))
                _check_finite(step_loss, state.step + 1, scheduler.get_last_lr()[0])
                running_loss += step_loss
                running_count += sum(task.weight(train_set, indices) for indices in local)
                if training.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batches_in_epoch = position
                state.samples_seen += group_size
                progress.update(1)
                if strategy.on_step(raw_model, state.step, state.epoch, steps_per_epoch):
                    accelerator.log({"trainable_params": count_parameters(raw_model)[0]}, step=state.step)
                if state.step % training.log_every_steps == 0:
                    loss = _mean_over_processes(accelerator, running_loss, running_count)
                    logged = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                              "epoch": state.epoch + position / len(batches)}
                    accelerator.log(logged, step=state.step)
                    reporter.log(logged, state.step)
                    progress.set_postfix(loss=f"{loss:.4f}")
                    running_loss, running_count = 0.0, 0
                if training.eval_every_steps and state.step % training.eval_every_steps == 0:
                    eval_start = time.perf_counter()
                    _eval_and_keep_best(evaluate, accelerator, model, tokenizer, data, run, state, spec, task)
                    excluded += time.perf_counter() - eval_start
                stop_now = _agree(accelerator, preemption.requested or
                                  (stop_after_steps is not None and state.step >= stop_after_steps))
                periodic = bool(training.save_every_steps and state.step % training.save_every_steps == 0)
                if stop_now or periodic or reporter.preempted(state.step):
                    save_start = time.perf_counter()
                    state.train_time_s = time_before + save_start - epoch_start - excluded
                    # the loss accumulated since the last log, summed over ranks, so a resume logs the same rows
                    running_loss, running_count = _sum_over_processes(accelerator, running_loss, running_count)
                    state.running_loss, state.running_count = running_loss, running_count
                    saved = save_training_state(accelerator, run.path, state, training.keep_checkpoints)
                    state.running_loss, state.running_count = 0.0, 0
                    reporter.checkpoint(saved, state.step)
                    excluded += time.perf_counter() - save_start
                if stop_now:
                    interrupted = True
                    break
            if interrupted:
                break
            elapsed = time.perf_counter() - epoch_start - excluded
            state.train_time_s = time_before + elapsed
            state.epoch_times_s.append(round(elapsed, 3))
            state.epoch += 1
            state.batches_in_epoch = 0
            if strategy.on_step(raw_model, state.step, state.epoch, steps_per_epoch):
                accelerator.log({"trainable_params": count_parameters(raw_model)[0]}, step=state.step)
    progress.close()
    if interrupted:
        accelerator.print(f"stopped after step {state.step}; resume with --resume")
        accelerator.end_training()
        return RunResult(run.path, {"step": state.step}, interrupted=True)

    # --- final model, evaluation and metrics ---------------------------------------------------
    if training.keep_best and run.best_model.exists():
        accelerator.print(f"final model = best evaluated at step {state.best_step}")
        _load_best(raw_model, run.best_model)
    final_eval = evaluate("final")
    probe = fixed_batch(task, eval_set, pad_id)
    probe_loss = batch_loss(raw_model, probe, accelerator.device)  # every rank: ZeRO-3 gathers need all
    save_model(accelerator, model, tokenizer, data.label_names, run.spec_yaml, run.model_dir)
    verified = verify_saved_model(run.model_dir, probe, probe_loss, task.auto_class) if world == 1 else None
    if verified is not None and (run.path / "model-adapter").is_dir():
        verified["adapter"] = verify_adapter(run.path / "model-adapter")
    metrics = {
        "task": spec.task,
        "strategy": spec.strategy.name,
        "model": spec.model.name_or_path,
        "eval": final_eval,
        "trainable_params": count_parameters(raw_model)[0] if dist.zero_stage != 3 or dist.backend != "deepspeed"
        else trainable,
        "trainable_params_at_start": trainable,
        "total_params": total,
        "memory": memory,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "train_truncated": data.truncated,
        **({"data": data.notes} if data.notes else {}),
        "steps": state.step,
        "epochs": state.epoch,
        "epoch_times_s": state.epoch_times_s,
        "train_runtime_s": round(state.train_time_s, 3),
        "train_samples_per_s": round(state.samples_seen / max(state.train_time_s, 1e-9), 3),
        "best_step": state.best_step,
        "resumed_from_step": resumed_from_step,
        "seed": spec.seed,
        "fixed_batch_loss": probe_loss,
        "saved_model_verified": verified is not None,
        "distributed": {"backend": dist.backend, "num_processes": world,
                        "zero_stage": dist.zero_stage if dist.backend == "deepspeed" else None},
        "runner": spec.runner,
        **reporter.describe(),
    }
    if accelerator.is_main_process:  # last: a run with metrics.json is complete (a launcher publishes it)
        run.write_pending_metrics(metrics) if launched else run.write_metrics(metrics)
    accelerator.log({f"final/{k}": v for k, v in final_eval.items() if isinstance(v, float)}, step=state.step)
    accelerator.end_training()
    accelerator.print(f"{task.headline(final_eval)}  -> {run.path}")
    return RunResult(run.path, metrics)


def memory_report(model) -> dict:
    """What the loaded weights take, and what they would take in fp32 (QLoRA's saving)."""
    from tlscale.models.quantization import footprint_bytes, footprint_unquantized_bytes, is_quantized

    now, fp32 = footprint_bytes(model), footprint_unquantized_bytes(model)
    return {"quantized": is_quantized(model), "weights_mb": round(now / 2**20, 3),
            "weights_fp32_mb": round(fp32 / 2**20, 3), "ratio_to_fp32": round(now / fp32, 4)}


def _fresh_accelerator_state() -> None:
    """Accelerate keeps process-wide singletons; a second in-process run (notebooks, benchmarks,
    tests) with other settings would otherwise fail. Launched multi-process runs keep theirs."""
    from accelerate.state import AcceleratorState, GradientState

    from tlscale.distributed.accelerate_setup import world_size

    if world_size() == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _usable_batches(n_batches: int, dist, training) -> int:
    """DeepSpeed counts micro-batches itself: every optimizer step must see exactly
    grad_accum_steps of them, so a ragged tail is dropped rather than miscounted."""
    if dist.backend == "deepspeed" and training.grad_accum_steps > 1:
        return n_batches - n_batches % training.grad_accum_steps
    return n_batches


def _ds_gas(dist, training) -> int:
    return training.grad_accum_steps if dist.backend == "deepspeed" else 1


def _forward_backward(accelerator, model, task, train_set, local_group: list[list[int]], global_weight: int,
                      pad_id: int, cache, deepspeed_gas: int = 1) -> float:
    """Gradients of one optimizer step. Each rank's micro-batch loss is weighted so that, after the
    backend averages over ranks (and DeepSpeed divides by accumulation steps), the gradient is that of
    the mean loss over the whole global group: the same as one process would compute."""
    total = 0.0
    scale = accelerator.num_processes * deepspeed_gas / max(global_weight, 1)
    for i, indices in enumerate(local_group):
        last = i == len(local_group) - 1
        accelerator.sync_gradients = last  # DeepSpeed steps only at the boundary
        batch = task.collate(train_set, indices, pad_id)
        index = batch.pop("index")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        replicated = accelerator.distributed_type.name in ("MULTI_CPU", "MULTI_GPU")  # DDP: reduce once per step
        with accelerator.no_sync(model) if replicated and not last else nullcontext():
            if cache is not None:
                batch = cache.inputs(model, batch, index)
            loss = model(**batch).loss
            weight = task.weight(train_set, indices)  # what the model's mean loss averages over
            accelerator.backward(loss * weight * scale)
        total += loss.item() * weight
    accelerator.sync_gradients = True
    return total


def _check_finite(loss: float, step: int, lr: float) -> None:
    """A diverged run would crash later (evaluation, gathering) with a confusing error; say what it is."""
    if math.isfinite(loss):
        return
    where = f"the training loss became {loss} at step {step} (learning rate {lr:.3g})"
    if step == 1:  # no update yet: neither the learning rate nor weight decay can have caused it
        raise TrainingDiverged(f"training: {where}, before any update: check the data (empty or extreme inputs, "
                               "labels out of range) and training.mixed_precision (fp16 overflows)")
    raise TrainingDiverged(f"training: {where}; the usual causes are training.lr too high, "
                           "training.weight_decay too high, too short a warmup (raise training.warmup_ratio), "
                           "fp16 overflow (training.mixed_precision) or bad data (empty or extreme inputs)")


def _sum_over_processes(accelerator, loss_sum: float, count: int) -> tuple[float, int]:
    """Rank 0 keeps the totals over all ranks, the others zero (what the next log reduces is unchanged)."""
    if accelerator.num_processes == 1:
        return loss_sum, count
    totals = accelerator.reduce(torch.tensor([loss_sum, float(count)], device=accelerator.device), reduction="sum")
    if accelerator.is_main_process:
        return totals[0].item(), int(totals[1].item())
    return 0.0, 0


def _mean_over_processes(accelerator, loss_sum: float, count: int) -> float:
    if accelerator.num_processes == 1:
        return loss_sum / max(count, 1)
    totals = accelerator.reduce(torch.tensor([loss_sum, float(count)], device=accelerator.device), reduction="sum")
    return (totals[0] / totals[1].clamp(min=1)).item()


def _agree(accelerator, flag: bool) -> bool:
    """A stop request on any rank stops all of them at the same step (a save needs every rank)."""
    if accelerator.num_processes == 1:
        return flag
    value = accelerator.reduce(torch.tensor([1.0 if flag else 0.0], device=accelerator.device), reduction="sum")
    return bool(value.item() > 0)


def _resume(accelerator, checkpoint: Path, dist, world: int) -> TrainState:
    from tlscale.train.checkpoints import check_resumable

    check_resumable(checkpoint, dist.backend, world)
    state = load_training_state(accelerator, checkpoint)
    state.world_size, state.backend = world, dist.backend
    return state


def _eval_and_keep_best(evaluate, accelerator, model, tokenizer, data, run, state: TrainState, spec, task) -> None:
    result = evaluate("periodic")
    accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=state.step)
    name = task.default_metric if spec.training.metric_for_best == "auto" else spec.training.metric_for_best
    value = result[name]
    lower_is_better = task.metrics[name] == "min"
    better = state.best_metric is None or (value < state.best_metric if lower_is_better else value > state.best_metric)
    if better:
        state.best_metric, state.best_step = value, state.step
        if spec.training.keep_best:
            save_model(accelerator, model, tokenizer, data.label_names, run.spec_yaml, run.best_model)


def _load_best(model, path: Path) -> None:
    from safetensors.torch import load_file

    from tlscale.train.checkpoints import adapter_dir

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter_dir(path) / "adapter_model.safetensors")))
    else:
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
