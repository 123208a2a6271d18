"""`tlscale train`: in this process, or in N local processes that run the same loop."""
from __future__ import annotations

from tlscale.errors import RunStateError
from tlscale.spec import JobSpec
from tlscale.train import RunResult


def run_training(spec: JobSpec, resume: bool, overwrite: bool, stop_after_steps: int | None,
                 show_progress: bool) -> RunResult | None:
    if spec.runner == "ray":
        from tlscale.runners.ray_runner import run_on_ray

        return run_on_ray(spec, resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps,
                          show_progress=show_progress)
    if spec.distributed.backend == "none":  # DDP and DeepSpeed always get a process group, even of one
        from tlscale.train import train

        return train(spec, resume=resume, overwrite=overwrite, stop_after_steps=stop_after_steps,
                     show_progress=show_progress)
    return _launch(spec, resume, overwrite, stop_after_steps, show_progress)


def _launch(spec: JobSpec, resume: bool, overwrite: bool, stop_after_steps: int | None,
            show_progress: bool) -> RunResult | None:
    from tlscale.run_folder import claim
    from tlscale.runners.launch import launch_local

    with claim(spec.output_dir, resume=resume, overwrite=overwrite) as run_claim:
        run = prepare_launch(spec, resume)
        if run is None:
            code = launch_local(spec, spec.distributed.num_processes, resume, stop_after_steps, show_progress,
                                lock_fd=run_claim.fd)
            if code == 2:
                raise RunStateError("a worker rejected its input (message above)")
            if code != 0:
                raise WorkerFailed(code)
        result = finish_launched_run(spec)
        if result is not None:
            run_claim.succeeded()
        return result


def prepare_launch(spec: JobSpec, resume: bool):
    """Everything that can be checked before starting workers, so bad input fails once, with exit code 2.
    Returns None, or the run itself when a resumed run had only its finish left (nothing to launch)."""
    from tlscale.models import load_tokenizer, resolve_model_path
    from tlscale.strategies import build_strategy
    from tlscale.tasks import build_task
    from tlscale.train.checkpoints import check_resumable, latest_checkpoint
    from tlscale.train.run_dir import RunDir

    run = RunDir(spec.output_dir)
    if resume and run.pending_metrics.is_file() and run.model_dir.is_dir():
        return run  # killed after the workers ended, before the metrics were published
    checkpoint = latest_checkpoint(run.path) if resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, spec.distributed.backend, spec.world_size)
    resolve_model_path(spec.model.name_or_path)
    build_strategy(spec.strategy).load_options()  # qlora: a missing or broken bitsandbytes fails here, once
    build_task(spec).prepare(load_tokenizer(spec.model))  # bad data fails here, once, with exit code 2
    if spec.distributed.backend == "deepspeed":
        from tlscale.distributed.deepspeed_config import deepspeed_config

        deepspeed_config(spec)  # so does a user DeepSpeed JSON that contradicts the spec
    return None


def finish_launched_run(spec: JobSpec) -> RunResult | None:
    """After the workers: merge a ZeRO-3 adapter, verify the saved model from this process, then publish
    metrics.json, the last file of a complete run."""
    from tlscale.train.run_dir import RunDir

    run = RunDir(spec.output_dir)
    if not run.pending_metrics.exists():
        return None  # stopped early (--stop-after-steps or preemption); checkpoint written
    metrics = run.read_pending_metrics()
    adapter = run.path / "model-adapter"
    if adapter.is_dir() and not run.model_dir.exists():  # LoRA under ZeRO-3: the workers held only shards
        from tlscale.runners.export import export_merged

        export_merged(adapter, run.model_dir, evaluate=False)
    metrics["saved_model_verified"] = bool(verify_launched_run(spec, metrics))
    run.write_metrics(metrics)
    return RunResult(run.path, metrics)


def verify_launched_run(spec: JobSpec, metrics: dict) -> dict:
    """Workers cannot reload the model while ZeRO-3 is active; this (parent) process can."""
    from tlscale.models import load_tokenizer
    from tlscale.models.loading import quiet_loading
    from tlscale.tasks import build_task
    from tlscale.train.verify import fixed_batch, verify_adapter, verify_saved_model

    quiet_loading()
    tokenizer = load_tokenizer(spec.model)
    task = build_task(spec)
    batch = fixed_batch(task, task.prepare(tokenizer).eval, tokenizer.pad_token_id)
    report = verify_saved_model(spec.output_dir / "model", batch, metrics["fixed_batch_loss"], task.auto_class)
    if (spec.output_dir / "model-adapter").is_dir():
        report["adapter"] = verify_adapter(spec.output_dir / "model-adapter")
    return report


class WorkerFailed(Exception):
    def __init__(self, code: int):
        self.code = code
        super().__init__(f"training failed in a worker process (exit code {code}); its error is shown above")
