"""runner: local. In this process (no distribution), or N processes on this machine that run the same loop
(DDP and DeepSpeed always get a process group, even of one)."""
from __future__ import annotations

from tlscale.errors import RunStateError
from tlscale.runners.base import RUNNERS, RunOptions, WorkerFailed
from tlscale.spec import JobSpec
from tlscale.training.run import RunResult


@RUNNERS.register("local")
def run_local(spec: JobSpec, options: RunOptions) -> RunResult | None:
    if spec.distributed.backend == "none":
        return run_in_process(spec, options)
    return run_launched(spec, options)


def run_in_process(spec: JobSpec, options: RunOptions) -> RunResult:
    from tlscale.distributed.accelerate_setup import fresh_accelerator_state
    from tlscale.logs import run_log
    from tlscale.run_folder import claim
    from tlscale.training.checkpoints import latest_checkpoint
    from tlscale.training.loop import train
    from tlscale.training.run import Run
    from tlscale.training.run_dir import RunDir

    with claim(spec.output_dir, resume=options.resume, overwrite=options.overwrite) as run_claim:
        folder = RunDir(spec.output_dir)
        if options.resume and folder.pending_metrics.is_file() and folder.model_dir.is_dir():
            result = RunResult(folder.path, folder.publish_pending_metrics())  # killed while finishing: finish now
        else:
            fresh_accelerator_state()
            run = Run(folder, checkpoint=latest_checkpoint(folder.path) if options.resume else None,
                      resuming=options.resume, stop_after_steps=options.stop_after_steps,
                      show_progress=options.show_progress, stop=options.stop)
            with run_log(folder.path):
                result = train(spec, run)
        if not result.interrupted:
            run_claim.succeeded()
    return result


def run_launched(spec: JobSpec, options: RunOptions) -> RunResult | None:
    from tlscale.logs import run_log
    from tlscale.run_folder import claim
    from tlscale.runners.launch import launch_local
    from tlscale.training.run_dir import RunDir

    with claim(spec.output_dir, resume=options.resume, overwrite=options.overwrite) as run_claim:
        folder = RunDir(spec.output_dir)
        finish_only = options.resume and folder.pending_metrics.is_file() and folder.model_dir.is_dir()
        data = None
        if not finish_only:  # (killed after the workers ended, before the metrics were published)
            data = preflight(spec, options.resume)  # kept for the check of the saved model: read once here
            with run_log(spec.output_dir):
                code = launch_local(spec, spec.distributed.num_processes, options.resume, options.stop_after_steps,
                                    options.show_progress, lock_fd=run_claim.fd, stop=options.stop)
            if code == 2:
                raise RunStateError("a worker rejected its input (message above)")
            if code != 0:
                raise WorkerFailed(code)
        result = finish_launched_run(spec, data)
        if result is not None:
            run_claim.succeeded()
        return result


def preflight(spec: JobSpec, resume: bool = False, check_data: bool = True):
    """Everything that can be checked before training starts, so bad input fails once, with exit code 2:
    `tlscale validate` and every launcher run it. Returns the prepared task data when check_data."""
    from tlscale.models import resolve_model_path
    from tlscale.strategies import build_strategy
    from tlscale.training.checkpoints import check_resumable, latest_checkpoint

    checkpoint = latest_checkpoint(spec.output_dir) if resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, spec.distributed.backend, spec.world_size)
    resolve_model_path(spec.model.name_or_path)
    build_strategy(spec.strategy).check(spec)  # qlora: bitsandbytes works here; LoRA targets exist
    if spec.distributed.backend == "deepspeed":
        from tlscale.distributed.deepspeed_config import deepspeed_config

        deepspeed_config(spec)  # a user DeepSpeed JSON that contradicts the spec
    return prepared_data(spec) if check_data else None  # bad data fails here, once


def prepared_data(spec: JobSpec):
    from tlscale.models import load_tokenizer
    from tlscale.tasks import build_task

    return build_task(spec).prepare(load_tokenizer(spec.model))


def finish_launched_run(spec: JobSpec, data=None) -> RunResult | None:
    """After the workers: merge a ZeRO-3 adapter, verify the saved model from this process, then publish
    metrics.json, the last file of a complete run."""
    from tlscale.training.run_dir import RunDir

    run = RunDir(spec.output_dir)
    if not run.pending_metrics.exists():
        return None  # stopped early (--stop-after-steps or preemption); checkpoint written
    metrics = run.read_pending_metrics()
    adapter = run.path / "model-adapter"
    if adapter.is_dir() and not run.model_dir.exists():  # LoRA under ZeRO-3: the workers held only shards
        from tlscale.inference.export import export_merged

        export_merged(adapter, run.model_dir, evaluate=False)
    metrics["saved_model_verified"] = bool(verify_launched_run(spec, metrics, data))
    run.write_metrics(metrics)
    return RunResult(run.path, metrics)


def verify_launched_run(spec: JobSpec, metrics: dict, data=None) -> dict:
    """Workers cannot reload the model while ZeRO-3 is active; this (parent) process can. data: the task
    data preflight prepared (else it is prepared again)."""
    from tlscale.models import load_tokenizer
    from tlscale.tasks import build_task

    tokenizer = load_tokenizer(spec.model)
    task = build_task(spec)
    return task.verify_saved(spec.output_dir / "model", data or task.prepare(tokenizer), tokenizer.pad_token_id,
                             metrics["fixed_batch_loss"], spec.training.mixed_precision)
