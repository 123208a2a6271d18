"""The one training loop. It reads top to bottom: set up, epochs of steps, finish.

The same function runs in-process, in each process of a local multi-process launch, and inside Ray
workers: Accelerate decides what "the model" and "a step" mean (plain, DDP, DeepSpeed). What varies
by task or strategy goes through their hooks (prepare, build_model, collate, loss, evaluate); what a
runner decides (folder, resume, stopping, publishing) arrives in `run`.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tlscale.errors import ConfigError, TlscaleError
from tlscale.logs import log
from tlscale.spec import JobSpec
from tlscale.training.allocator import keep_freed_memory, reusing_freed_memory
from tlscale.training.checkpoints import TrainState, load_training_state, save_training_state
from tlscale.training.run import Reporter, Run, RunResult


class TrainingDiverged(TlscaleError):
    """The loss became NaN or infinite: a user setting (learning rate, data), not a crash."""


@dataclass
class Session:
    """Everything set up for one run of the loop; the pieces below read and advance it."""
    spec: JobSpec
    run: Run
    reporter: Reporter
    accelerator: Any
    task: Any
    data: Any
    tokenizer: Any
    strategy: Any
    model: Any  # as prepared by Accelerate (DDP / DeepSpeed engine)
    raw_model: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    parameters: tuple[int, int]  # (trainable, total) at the start
    memory: dict
    train_cache: Any = None
    eval_cache: Any = None
    resumed_from_step: int | None = None
    running: list = field(default_factory=lambda: [0.0, 0])  # loss sum and weight since the last logged row
    progress: Any = None

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def train(spec: JobSpec, run: Run, reporter: Reporter | None = None) -> RunResult:
    """Train in this process (one rank of the run) and publish the metrics last. The runner has claimed
    run.dir and decided where to continue from; see tlscale.runners for them."""
    session = set_up(spec, run, reporter or Reporter())
    from tqdm.auto import tqdm

    show = run.show_progress and session.accelerator.is_main_process
    with tqdm(total=session.total_steps, initial=session.state.step, disable=not show, desc="train",
              dynamic_ncols=True) as session.progress:
        session.model.train()
        while session.state.epoch < spec.training.epochs and session.state.step < session.total_steps:
            if not run_epoch(session):
                log.info(f"stopped after step {session.state.step}; resume with --resume")
                session.accelerator.end_training()
                return RunResult(run.path, {"step": session.state.step}, interrupted=True)
    return finish(session)


# --- set up ----------------------------------------------------------------------------------------

def set_up(spec: JobSpec, run: Run, reporter: Reporter) -> Session:
    from accelerate import Accelerator

    from tlscale.distributed.accelerate_setup import accelerator_kwargs, check_backend, fresh_accelerator_state
    from tlscale.distributed.steps import usable_batches
    from tlscale.strategies import count_parameters, parameter_groups
    from tlscale.training.schedule import lr_schedule
    from tlscale.training.tracking import trackers_for

    training, dist = spec.training, spec.distributed
    if training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("training.mixed_precision: fp16 needs a CUDA GPU, none found; use 'bf16' or 'no' on CPU")
    if _reuses_cpu_memory(spec) and not torch.cuda.is_available():
        keep_freed_memory()
    tokenizer, task, data, strategy, model, memory = _build(spec)
    # The Accelerator comes after the model: once a ZeRO-3 plugin exists, transformers builds every model
    # partitioned (zero.Init), which a fresh head cannot be initialised under. prepare() partitions it.
    fresh_accelerator_state()
    accelerator = Accelerator(**accelerator_kwargs(spec), log_with=trackers_for(run.path, training.report_to),
                              project_dir=str(run.path))
    check_backend(accelerator, spec)
    if accelerator.num_processes != spec.world_size:
        raise ConfigError(f"the spec asks for {spec.world_size} process(es) but {accelerator.num_processes} are running")
    run.dir.create(spec) if accelerator.is_main_process else run.dir.remember(spec)
    strategy.prepare(accelerator)
    parameters = count_parameters(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, training, spec.strategy, strategy.unfreezes_later),
                                  lr=training.lr, fused=dist.backend != "deepspeed")  # one kernel per step
    per_epoch = usable_batches(task.batch_count(data.train, training.batch_size, accelerator.num_processes),
                               dist, training)
    steps_per_epoch = math.ceil(per_epoch / training.grad_accum_steps)
    total_steps = min(steps_per_epoch * training.epochs, training.max_steps or math.inf)
    scheduler = lr_schedule(training.scheduler, optimizer, int(training.warmup_ratio * total_steps), total_steps)
    # The scheduler stays ours: prepared, Accelerate steps it once per process (DDP) and DeepSpeed's engine
    # again. Our batch size is global and we step it once per optimizer step; registered, it is checkpointed.
    prepared, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.init_trackers("tlscale", config={"strategy": spec.strategy.name, "lr": training.lr,
                                                     "batch_size": training.batch_size, "seed": spec.seed,
                                                     "world_size": accelerator.num_processes})
    session = Session(spec, run, reporter, accelerator, task, data, tokenizer, strategy, prepared,
                      accelerator.unwrap_model(prepared), optimizer, scheduler,
                      TrainState(world_size=accelerator.num_processes, backend=dist.backend), per_epoch,
                      steps_per_epoch, total_steps, parameters, memory)
    _resume(session)
    _feature_caches(session)
    strategy.on_step(session.raw_model, session.state.step, session.state.epoch, steps_per_epoch)
    log.info(_summary(session))
    return session


def _reuses_cpu_memory(spec: JobSpec) -> bool:
    """By default not under DeepSpeed: ZeRO is there to save memory, and its flat buffers fragment a heap
    that is never trimmed (bench/README.md: ZeRO-3's per-rank peak grew by about half)."""
    chosen = spec.training.reuse_cpu_memory
    return chosen if chosen is not None else spec.distributed.backend != "deepspeed"


def _build(spec: JobSpec):
    """Tokenizer, task data, strategy and model, before any process group or Accelerator exists."""
    from accelerate.utils import set_seed

    from tlscale.models import load_tokenizer
    from tlscale.strategies import build_strategy
    from tlscale.tasks import build_task

    set_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model)
    task = build_task(spec)
    data = task.prepare(tokenizer)
    set_seed(spec.seed)  # the new head's initialisation depends on nothing that ran before
    strategy = build_strategy(spec.strategy)
    model = task.build_model(data, strategy.load_options())
    memory = memory_report(model)
    model = strategy.apply(model)
    if spec.training.gradient_checkpointing:
        from tlscale.models.layers import checkpoint_activations

        log.info(f"training.gradient_checkpointing: {checkpoint_activations(model)} transformer blocks recompute "
                 "their activations in the backward pass")
    if spec.training.fast_dropout and not spec.training.compile and not torch.cuda.is_available():
        from tlscale.models.dropout import use_cpu_dropout

        layers, models = use_cpu_dropout(model)
        log.debug(f"training.fast_dropout: {layers} dropout layers and the attention of {models} models draw cheaper "
                  "CPU masks")
    if spec.training.compile:
        from tlscale.models.layers import compile_blocks

        log.info(f"training.compile: {compile_blocks(model)} transformer blocks compiled (torch.compile, inductor); "
                 "the first steps wait for the compiler")
    return tokenizer, task, data, strategy, model, memory


def _resume(s: Session) -> None:
    from tlscale.training.checkpoints import check_resumable

    run, dist = s.run, s.spec.distributed
    if run.checkpoint is not None:
        check_resumable(run.checkpoint, dist.backend, s.world)
        s.state = load_training_state(s.accelerator, run.checkpoint)
        s.state.world_size, s.state.backend = s.world, dist.backend
        s.running = [s.state.running_loss, s.state.running_count]  # carried over the resume
        s.state.running_loss, s.state.running_count = 0.0, 0
        s.resumed_from_step = s.state.step
        log.info(f"resumed from {run.checkpoint} (step {s.state.step})")
    elif run.resuming:
        log.info(f"no checkpoint in {run.path / 'checkpoints'}; starting from step 0")
    if run.resuming and s.accelerator.is_main_process:
        run.dir.forget_logs_after(s.state.step)  # rows logged after the checkpoint will be logged again


def _feature_caches(s: Session) -> None:
    from tlscale.strategies.feature_cache import FeatureCache

    if s.strategy.caches_features and s.task.caches_features:
        s.train_cache = FeatureCache(len(s.data.train), s.spec.strategy.cache_features)
        s.eval_cache = FeatureCache(len(s.data.eval))


def _summary(s: Session) -> str:
    trainable, total = s.parameters
    memory = s.memory
    fp32 = f" (fp32: {memory['weights_fp32_mb']:,.1f} MB)" if memory["quantized"] else ""
    return (f"{s.spec.strategy.name}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / max(total, 1):.2f}%), weights {memory['weights_mb']:,.1f} MB{fp32}; "
            f"{len(s.data.train)} train{_variants(s.data.notes)} / {len(s.data.eval)} eval examples, "
            f"{s.total_steps} steps; "
            f"{distribution_in_words(s.spec, s.world)}")


def _variants(notes: dict) -> str:
    if "tasks" in notes and "sampling" in notes:  # multi_task: each task's inputs and batches per epoch
        batches = notes["sampling"]["batches_per_epoch"]
        return " (" + ", ".join(f"{name} {part['train']:,} in {batches[name]} batches an epoch"
                                for name, part in notes["tasks"].items()) + ")"
    augment, distill = notes.get("augment"), notes.get("distill")
    parts = [f"{augment['labelled']:,} labelled", f"{augment['variants']:,} augmented"] if augment else []
    if distill and distill.get("unlabeled"):  # the teacher's texts without labels
        parts = parts or [f"{distill['labelled']:,} labelled"]
        unlabelled = distill["transfer_texts"] - distill["labelled"] - (augment["variants"] if augment else 0)
        chosen = f", the teacher's surest of {distill['unlabeled']:,}" if "selected" in distill else ""
        parts.append(f"{unlabelled:,} unlabelled{chosen}")
    return f" ({' + '.join(parts)})" if parts else ""


def distribution_in_words(spec: JobSpec, world: int) -> str:
    dist = spec.distributed
    where = "1 process" if world == 1 else f"{world} processes"
    if dist.backend == "deepspeed":
        offload = [what for what, on in (("optimizer", dist.offload_optimizer), ("parameters", dist.offload_params))
                   if on and on != "none"]
        return f"DeepSpeed ZeRO-{dist.zero_stage} on {where}" + (f", {' and '.join(offload)} offloaded"
                                                                  if offload else "")
    if dist.backend == "ddp":
        return f"DDP on {where}"
    return f"{where}, no distribution"


# --- the epoch and the step ------------------------------------------------------------------------

def run_epoch(s: Session) -> bool:
    """One pass over the shuffled batches (or the rest of it after a resume); False if asked to stop."""
    from tlscale.data.batching import shard_global_batches
    from tlscale.distributed.steps import agree

    spec, state, training = s.spec, s.state, s.spec.training
    batches = s.task.epoch_batches(s.data.train, training.batch_size, spec.seed * 1000 + state.epoch,
                                   training.group_by_length, s.world)[:s.batches_per_epoch]
    s.task.start_epoch(s.data, state.epoch)
    clock = _EpochClock(state.train_time_s)
    position = state.batches_in_epoch
    while position < len(batches) and state.step < s.total_steps:
        group = batches[position:position + training.grad_accum_steps]
        position += len(group)
        step(s, [shard_global_batches(indices, s.accelerator.process_index, s.world) for indices in group],
             global_weight=sum(s.task.weight(s.data.train, indices) for indices in group))
        state.batches_in_epoch = position
        state.samples_seen += sum(len(indices) for indices in group)
        if state.step % training.log_every_steps == 0:
            _log_loss(s, position / len(batches))
        if training.eval_every_steps and state.step % training.eval_every_steps == 0:
            with clock.excluded():
                _evaluate_and_keep_best(s)
        stop = agree(s.accelerator, s.run.stop.requested or state.step >= (s.run.stop_after_steps or math.inf))
        if stop or (training.save_every_steps and state.step % training.save_every_steps == 0) \
                or s.reporter.preempted(state.step):
            with clock.excluded():
                state.train_time_s = clock.total()
                _save_checkpoint(s)
        if stop:
            return False
    state.train_time_s = clock.total()
    state.epoch_times_s.append(round(clock.elapsed(), 3))
    state.epoch += 1
    state.batches_in_epoch = 0
    _on_step(s)
    return True


def step(s: Session, local_group: list[list[int]], global_weight: int) -> None:
    """One optimizer step over this rank's share of a group of micro-batches."""
    loss = forward_backward(s, local_group, global_weight)
    _check_finite(loss, s.state.step + 1, s.scheduler.get_last_lr()[0])
    s.running[0] += loss
    s.running[1] += sum(s.task.weight(s.data.train, indices) for indices in local_group)
    if not s.task.uses_every_parameter:
        from tlscale.distributed.steps import zero_missing_gradients

        zero_missing_gradients(s.model, s.spec.distributed)
    if s.spec.training.max_grad_norm:
        _clip_gradients(s, s.spec.training.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.state.step += 1
    s.progress.update(1)
    _on_step(s)


def _clip_gradients(s: Session, max_norm: float) -> None:
    """Clip the global gradient norm to max_norm. A fused AdamW (ours outside DeepSpeed) applies the clip factor
    inside its kernel as its grad_scale, sparing a pass over every gradient (~3 ms of a MiniLM step on 2 CPU
    cores); with fp16's loss scaler, which owns grad_scale, or under DeepSpeed, Accelerate clips."""
    optimizer = getattr(s.optimizer, "optimizer", s.optimizer)  # DeepSpeed's own optimizer has no defaults
    if not getattr(optimizer, "defaults", {}).get("fused") or s.accelerator.scaler is not None:
        s.accelerator.clip_grad_norm_(s.model.parameters(), max_norm)
        return
    grads = [p.grad for p in s.model.parameters() if p.grad is not None]
    if not grads:
        return
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    total_norm = get_total_norm(grads) if get_total_norm else \
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    clip = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)  # torch.nn.utils.clip_grad_norm_'s factor
    optimizer.grad_scale = 1.0 / clip  # the fused kernel divides every gradient by it


def forward_backward(s: Session, local_group: list[list[int]], global_weight: int) -> float:
    """Gradients of one optimizer step (scaled so N processes compute one process's gradient); returns
    this rank's loss summed over its examples (or tokens)."""
    from tlscale.distributed.steps import loss_scale, micro_batch

    accelerator, task, train_set = s.accelerator, s.task, s.data.train
    scale = loss_scale(accelerator, s.spec.distributed, s.spec.training, global_weight)
    total = 0.0
    for i, indices in enumerate(local_group):
        with micro_batch(accelerator, s.model, last=i == len(local_group) - 1):
            batch = task.collate(train_set, indices, s.tokenizer.pad_token_id)
            index = batch.pop("index")
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            if s.train_cache is not None:
                batch = s.train_cache.inputs(s.model, batch, index)
            loss = s.strategy.loss(s.model, batch, task.loss)
            weight = task.weight(train_set, indices)  # what the model's mean loss averages over
            accelerator.backward(loss * weight * scale)
        total += loss.item() * weight
    return total


def _on_step(s: Session) -> None:
    """The strategy may change what trains (gradual unfreezing); log the new count when it does."""
    from tlscale.strategies import count_parameters

    if s.strategy.on_step(s.raw_model, s.state.step, s.state.epoch, s.steps_per_epoch):
        s.accelerator.log({"trainable_params": count_parameters(s.raw_model)[0]}, step=s.state.step)


def _log_loss(s: Session, epoch_fraction: float) -> None:
    from tlscale.distributed.steps import mean_over_processes

    loss = mean_over_processes(s.accelerator, *s.running)
    row = {"train/loss": loss, "train/lr": s.scheduler.get_last_lr()[0], "epoch": s.state.epoch + epoch_fraction}
    s.accelerator.log(row, step=s.state.step)
    s.reporter.log(row, s.state.step)
    s.progress.set_postfix(loss=f"{loss:.4f}")
    s.running = [0.0, 0]


def _save_checkpoint(s: Session) -> None:
    from tlscale.distributed.steps import sum_over_processes

    # the loss accumulated since the last log, summed over ranks, so a resume logs the same rows
    s.state.running_loss, s.state.running_count = sum_over_processes(s.accelerator, *s.running)
    s.running = [s.state.running_loss, s.state.running_count]
    saved = save_training_state(s.accelerator, s.run.path, s.state, s.spec.training.keep_checkpoints)
    s.state.running_loss, s.state.running_count = 0.0, 0
    s.reporter.checkpoint(saved, s.state.step)


def _evaluate(s: Session, final: bool = False) -> dict:
    return s.task.evaluate(s.accelerator, s.raw_model, s.data, s.run.dir, s.tokenizer.pad_token_id, s.eval_cache,
                           write_files=final)


def _evaluate_and_keep_best(s: Session) -> None:
    spec, state, task = s.spec, s.state, s.task
    result = _evaluate(s)
    s.accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=state.step)
    log.info(f"step {state.step}: {task.headline(result)}")
    from tlscale.eval.metrics import METRICS

    name = task.default_metric if spec.training.metric_for_best == "auto" else spec.training.metric_for_best
    value = result[name]
    if METRICS.get(name).better(value, state.best_metric):
        state.best_metric, state.best_step = value, state.step
        if spec.training.keep_best:
            task.save_model(s.accelerator, s.model, s.tokenizer, s.data, s.run.dir.spec_yaml, s.run.dir.best_model)


class _EpochClock:
    """Training time of an epoch, without the evaluations and saves inside it."""

    def __init__(self, before: float):
        self.before, self.start, self.left_out = before, time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.left_out

    def total(self) -> float:
        return self.before + self.elapsed()

    @contextmanager
    def excluded(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.left_out += time.perf_counter() - start


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


# --- finish ----------------------------------------------------------------------------------------

def finish(s: Session) -> RunResult:
    """Final model (the best one if kept), final evaluation, saved and verified model, metrics.json last."""
    run, accelerator, task, pad_id = s.run, s.accelerator, s.task, s.tokenizer.pad_token_id
    if s.spec.training.keep_best and run.dir.best_model.exists():
        log.info(f"final model = best evaluated at step {s.state.best_step}")
        task.load_weights(s.raw_model, run.dir.best_model)
    final_eval = _evaluate(s, final=True)
    probe_loss = task.probe_loss(s.raw_model, s.data, pad_id, accelerator.device)  # every rank: ZeRO-3 gathers
    task.save_model(accelerator, s.model, s.tokenizer, s.data, run.dir.spec_yaml, run.dir.model_dir)
    verified = task.verify_saved(run.dir.model_dir, s.data, pad_id, probe_loss,
                                 s.spec.training.mixed_precision) if s.world == 1 else None
    metrics = final_metrics(s, final_eval, probe_loss, verified is not None)
    if accelerator.is_main_process:
        _plot_learning_curve(s)
        run.publish(metrics)  # last: a run with metrics.json is complete
    accelerator.log({f"final/{k}": v for k, v in final_eval.items() if isinstance(v, float)}, step=s.state.step)
    accelerator.end_training()
    return RunResult(run.path, metrics)


def _plot_learning_curve(s: Session) -> None:
    """learning_curve.png: the logged training loss and the evaluations during training, by step."""
    import json

    from tlscale.eval.reports import plot_learning_curve

    rows = []
    for line in s.run.dir.log_file.read_text().splitlines() if s.run.dir.log_file.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # (a line cut short by a kill before a resume)
            continue
    metric = s.task.default_metric if s.spec.training.metric_for_best == "auto" else s.spec.training.metric_for_best
    plot_learning_curve(s.run.path / "learning_curve.png", rows, metric,
                        f"{s.spec.task}, {s.spec.strategy.name}: {s.state.step} steps")


def final_metrics(s: Session, final_eval: dict, probe_loss: float, verified: bool) -> dict:
    from tlscale.models.loading import lineage
    from tlscale.strategies import count_parameters

    spec, state, dist = s.spec, s.state, s.spec.distributed
    trainable, total = s.parameters
    zero3 = dist.backend == "deepspeed" and dist.zero_stage == 3  # parameters are partitioned: count at start
    return {
        "task": spec.task, "strategy": spec.strategy.name, "model": spec.model.name_or_path,
        **({"lineage": lineage(spec.model)} if spec.model.init_from else {}),
        "eval": final_eval,
        "trainable_params": trainable if zero3 else count_parameters(s.raw_model)[0],
        "trainable_params_at_start": trainable, "total_params": total, "memory": {**s.memory, **peak_memory()},
        "train_examples": len(s.data.train), "eval_examples": len(s.data.eval), "train_truncated": s.data.truncated,
        **({"data": s.data.notes} if s.data.notes else {}),
        "steps": state.step, "epochs": state.epoch, "epoch_times_s": state.epoch_times_s,
        "train_runtime_s": round(state.train_time_s, 3),
        "train_samples_per_s": round(state.samples_seen / max(state.train_time_s, 1e-9), 3),
        "best_step": state.best_step, "resumed_from_step": s.resumed_from_step, "seed": spec.seed,
        "fixed_batch_loss": probe_loss, "saved_model_verified": verified,
        "distributed": {"backend": dist.backend, "num_processes": s.world,
                        "zero_stage": dist.zero_stage if dist.backend == "deepspeed" else None},
        "runner": spec.runner,
        **s.reporter.describe(),
    }


def peak_memory() -> dict:
    """This process's peaks over the run: resident memory (what a ladder run by a service reports) and, on a
    GPU, device memory (weights, optimizer state, activations, all of it)."""
    import resource

    peaks = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
             "reuses_freed_cpu_memory": reusing_freed_memory()}
    if torch.cuda.is_available():
        peaks["peak_device_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peaks


def memory_report(model) -> dict:
    """What the loaded weights take, and what they would take in fp32 (QLoRA's saving)."""
    from tlscale.models.quantization import footprint_bytes, footprint_unquantized_bytes, is_quantized

    now, fp32 = footprint_bytes(model), footprint_unquantized_bytes(model)
    return {"quantized": is_quantized(model), "weights_mb": round(now / 2**20, 3),
            "weights_fp32_mb": round(fp32 / 2**20, 3), "ratio_to_fp32": round(now / fp32, 4)}
