"""The one training loop. It reads top to bottom: build, (resume), train, evaluate, save."""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tlscale.errors import ConfigError
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


def train(spec: JobSpec, *, resume: bool = False, overwrite: bool = False,
          stop_after_steps: int | None = None, show_progress: bool = True) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler
    from transformers.utils import logging as hf_logging

    from tlscale.data import build_classification_data, length_grouped_batches, tokenize
    from tlscale.data.batching import shuffled_batches
    from tlscale.models import build_classifier, load_tokenizer
    from tlscale.strategies import build_strategy, count_parameters, parameter_groups
    from tlscale.strategies.feature_cache import FeatureCache
    from tlscale.train.evaluation import evaluate_and_report
    from tlscale.train.tracking import trackers_for

    hf_logging.disable_progress_bar()  # per-shard load/save bars drown our own progress bar
    training = spec.training
    if training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("training.mixed_precision: fp16 needs a CUDA GPU, none found; use 'bf16' or 'no' on CPU")

    # --- the run directory, its spec and its data --------------------------------------------
    run = RunDir(spec.output_dir)
    run.check(resume=resume, overwrite=overwrite)
    set_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    data = build_classification_data(spec.data, spec.seed)
    train_set = tokenize(data.train, tokenizer, spec.model.max_length)
    eval_set = tokenize(data.eval, tokenizer, spec.model.max_length)
    pad_id = tokenizer.pad_token_id

    # --- model, strategy, optimizer ----------------------------------------------------------
    set_seed(spec.seed)  # the new head's initialisation depends on nothing that ran before
    model = build_classifier(spec.model, data.label_names)
    strategy = build_strategy(spec.strategy)
    strategy.apply(model)
    run.create(spec, overwrite=overwrite)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, training, spec.strategy), lr=training.lr,
                                  fused=True)  # one kernel per step on CPU and CUDA (Trainer's default too)
    batches_per_epoch = math.ceil(len(train_set) / training.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / training.grad_accum_steps)
    total_steps = steps_per_epoch * training.epochs
    if training.max_steps:
        total_steps = min(total_steps, training.max_steps)
    scheduler = get_scheduler(training.scheduler, optimizer, num_warmup_steps=int(training.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    _fresh_accelerator_state()
    accelerator = Accelerator(mixed_precision=training.mixed_precision, cpu=not torch.cuda.is_available(),
                              log_with=trackers_for(run.path, training.tensorboard), project_dir=str(run.path))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("tensorboard", config={"strategy": spec.strategy.name, "lr": training.lr,
                                                     "batch_size": training.batch_size, "seed": spec.seed})
    state = TrainState()
    checkpoint = latest_checkpoint(run.path) if resume else None
    if checkpoint is not None:
        state = load_training_state(accelerator, checkpoint)
        accelerator.print(f"resumed from {checkpoint} (step {state.step})")
    elif resume:
        accelerator.print(f"no checkpoint in {run.path / 'checkpoints'}; starting from step 0")
    raw_model = accelerator.unwrap_model(model)
    strategy.on_step(raw_model, state.step, state.epoch, steps_per_epoch)
    train_cache = FeatureCache(len(train_set), spec.strategy.cache_features) if strategy.caches_features else None
    eval_cache = FeatureCache(len(eval_set)) if strategy.caches_features else None
    accelerator.print(f"{spec.strategy.name}: {trainable:,} trainable of {total:,} parameters; "
                      f"{len(train_set)} train / {len(eval_set)} eval examples, {total_steps} steps")

    def evaluate(tag: str) -> dict:
        return evaluate_and_report(raw_model, eval_set, data, spec, run, accelerator.device, pad_id,
                                   eval_cache, write_files=(tag == "final"))

    # --- the loop ------------------------------------------------------------------------------
    progress = tqdm(total=total_steps, initial=state.step, disable=not (show_progress and accelerator.is_main_process),
                    desc="train", dynamic_ncols=True)
    interrupted = False
    model.train()
    with _Preemption() as preemption:
        while state.epoch < training.epochs and state.step < total_steps:
            epoch_seed = spec.seed * 1000 + state.epoch
            lengths = [len(ids) for ids in train_set.input_ids]
            batches = (length_grouped_batches(lengths, training.batch_size, epoch_seed) if training.group_by_length
                       else shuffled_batches(len(train_set), training.batch_size, epoch_seed))
            epoch_start, excluded, time_before = time.perf_counter(), 0.0, state.train_time_s  # excluded: evals, saves
            running_loss, running_count = 0.0, 0
            position = state.batches_in_epoch
            while position < len(batches) and state.step < total_steps:
                group = batches[position:position + training.grad_accum_steps]
                position += len(group)
                group_size = sum(len(indices) for indices in group)
                running_loss += _forward_backward(accelerator, model, train_set, group, pad_id, train_cache)
                running_count += group_size
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
                    trainable, _ = count_parameters(raw_model)
                    accelerator.log({"trainable_params": trainable}, step=state.step)
                if state.step % training.log_every_steps == 0:
                    accelerator.log({"train/loss": running_loss / running_count, "train/lr": scheduler.get_last_lr()[0],
                                     "epoch": state.epoch + position / len(batches)}, step=state.step)
                    progress.set_postfix(loss=f"{running_loss / running_count:.4f}")
                    running_loss, running_count = 0.0, 0
                if training.eval_every_steps and state.step % training.eval_every_steps == 0:
                    eval_start = time.perf_counter()
                    _eval_and_keep_best(evaluate, accelerator, raw_model, tokenizer, data, spec, run, state)
                    excluded += time.perf_counter() - eval_start
                stop_now = preemption.requested or (stop_after_steps is not None and state.step >= stop_after_steps)
                if stop_now or (training.save_every_steps and state.step % training.save_every_steps == 0):
                    save_start = time.perf_counter()
                    state.train_time_s = time_before + save_start - epoch_start - excluded
                    save_training_state(accelerator, run.path, state, training.keep_checkpoints)
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
        raw_model.load_state_dict(_best_state(run.best_model, raw_model), strict=True)
    final_eval = evaluate("final")
    save_model(raw_model, tokenizer, data.label_names, run.spec_yaml, run.model_dir)
    metrics = {
        "task": spec.task,
        "strategy": spec.strategy.name,
        "model": spec.model.name_or_path,
        "eval": final_eval,
        "trainable_params": count_parameters(raw_model)[0],
        "trainable_params_at_start": trainable,
        "total_params": total,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "train_truncated": train_set.truncated,
        "steps": state.step,
        "epochs": state.epoch,
        "epoch_times_s": state.epoch_times_s,
        "train_runtime_s": round(state.train_time_s, 3),
        "train_samples_per_s": round(state.samples_seen / max(state.train_time_s, 1e-9), 3),
        "best_step": state.best_step,
        "seed": spec.seed,
    }
    run.write_metrics(metrics)
    accelerator.log({f"final/{k}": v for k, v in final_eval.items() if isinstance(v, float)}, step=state.step)
    accelerator.end_training()
    accelerator.print(f"eval accuracy {final_eval['accuracy']:.4f}  macro-F1 {final_eval['f1_macro']:.4f}  "
                      f"ECE {final_eval['ece']:.4f}  ({len(eval_set)} examples)  -> {run.path}")
    return RunResult(run.path, metrics)


def _fresh_accelerator_state() -> None:
    """Accelerate keeps process-wide singletons; a second in-process run (notebooks, benchmarks,
    tests) with other settings would otherwise fail. Launched multi-process runs keep theirs."""
    import os

    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _forward_backward(accelerator, model, train_set, group: list[list[int]], pad_id: int, cache) -> float:
    """Gradients of one optimizer step's micro-batches, weighted by size; returns the summed loss."""
    from tlscale.data import collate

    group_size = sum(len(indices) for indices in group)
    total = 0.0
    for indices in group:
        batch = collate(train_set, indices, pad_id)
        index = batch.pop("index")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if cache is not None:
            batch = cache.inputs(model, batch, index)
        loss = model(**batch).loss
        accelerator.backward(loss * len(indices) / group_size)
        total += loss.item() * len(indices)
    return total


def _eval_and_keep_best(evaluate, accelerator, raw_model, tokenizer, data, spec, run, state: TrainState) -> None:
    result = evaluate("periodic")
    accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=state.step)
    name = spec.training.metric_for_best
    value = result[name]
    better = state.best_metric is None or (value < state.best_metric if name in ("loss", "ece") else value > state.best_metric)
    if better:
        state.best_metric, state.best_step = value, state.step
        if spec.training.keep_best and accelerator.is_main_process:
            save_model(raw_model, tokenizer, data.label_names, run.spec_yaml, run.best_model)


def _best_state(path: Path, model) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))
