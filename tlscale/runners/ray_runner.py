"""`runner: ray`: the same training loop in Ray Train workers, one per resources.num_workers.

Ray places the workers on the cluster's nodes and sets up their process group; each worker builds its
own Accelerator (DeepSpeed included) inside the loop, exactly as a local process does. Metrics and
checkpoints go to ray.train.report. After a worker failure Ray restarts the group (up to
resources.max_failures times) and every worker resumes from the latest reported checkpoint through the
loop's ordinary resume path. output_dir must be on storage that every node sees (like storage_path):
all ranks write their part of a checkpoint there and rank 0 reports it.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from tlscale.errors import ConfigError, require
from tlscale.logs import log
from tlscale.runners.base import RUNNERS, RunOptions, WorkerFailed
from tlscale.spec import JobSpec, dump_spec
from tlscale.training.run import Reporter, RunResult

MARKER = ".ray-run-id"  # written by the driver; a worker that cannot see it is on unshared storage


class RayReporter(Reporter):
    def __init__(self, placement: list[dict]):
        self.placement = placement
        self.preemption_checkpoint_step: int | None = None

    def preempted(self, step: int) -> bool:
        """Ray announces a node's reclaim (spot preemption, drain) before it happens: take a just-in-time
        checkpoint once and keep training; Ray then restarts the group from it. (A barrier: every rank
        asks at every step.)"""
        import ray.train

        if self.preemption_checkpoint_step is not None or ray.train.get_preemption_info() is None:
            return False
        self.preemption_checkpoint_step = step
        log.warning(f"preemption announced: checkpointing at step {step}")
        return True

    def log(self, metrics: dict, step: int) -> None:
        import ray.train

        ray.train.report({**metrics, "step": step})

    def checkpoint(self, path: Path, step: int) -> None:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        # Every rank has written its part into the shared folder; rank 0 hands it to Ray.
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report({"step": step, "checkpoint": path.name}, checkpoint=checkpoint)

    def describe(self) -> dict:
        return {"ray": {"workers": self.placement, "preemption_checkpoint_step": self.preemption_checkpoint_step}}


@RUNNERS.register("ray")
def run_on_ray(spec: JobSpec, options: RunOptions) -> RunResult | None:
    require("ray", "ray")
    from tlscale.logs import run_log
    from tlscale.run_folder import claim

    with claim(spec.output_dir, resume=options.resume, overwrite=options.overwrite) as run_claim:  # the driver's
        with run_log(spec.output_dir):
            result = _fit(spec, options.resume, options.stop_after_steps, options.show_progress)
        if result is not None:
            run_claim.succeeded()
        return result


def _fit(spec: JobSpec, resume: bool, stop_after_steps: int | None, show_progress: bool) -> RunResult | None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tlscale.runners.local import finish_launched_run, preflight
    from tlscale.training.run_dir import RunDir

    folder = RunDir(spec.output_dir)
    if resume and folder.pending_metrics.is_file() and folder.model_dir.is_dir():
        return finish_launched_run(spec)  # only the finish was left
    data = preflight(spec, resume)  # kept for the check of the saved model: read once in the driver
    run_path = Path(spec.output_dir)
    run_id = f"{run_path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    (run_path / MARKER).write_text(run_id)
    res = spec.resources
    per_worker = {"CPU": res.cpus_per_worker, **res.custom_resources}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker or 1
    storage = Path(res.storage_path or run_path / "ray").expanduser().resolve()
    connect(res.address)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"spec": dump_spec(spec), "resume": resume, "stop_after_steps": stop_after_steps,
                           "run_id": run_id, "show_progress": show_progress},
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker, placement_strategy=res.placement_strategy),
        run_config=RunConfig(name=run_id, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=res.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=spec.training.keep_checkpoints)),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001  (Ray wraps the worker's error; show it, fail the run)
        raise RayRunFailed(exc) from None
    return finish_launched_run(spec, data)


def connect(address: str | None) -> None:
    """Join the cluster at address (or RAY_ADDRESS, or one started on this machine); else start one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)


def worker_loop(config: dict) -> None:
    """Runs in every Ray Train worker: the entry point of that process's work (its settings are ours)."""
    import os

    import ray.train
    import yaml

    from tlscale.logs import run_log, setup_entry_point
    from tlscale.runners.launch import clear_stale_build_locks, extensions_dir, op_build_env

    os.environ.update(op_build_env())  # the same compiled DeepSpeed ops as local launches, built by the same ninja
    clear_stale_build_locks(extensions_dir())
    os.environ["RANK"] = str(ray.train.get_context().get_world_rank())  # Ray sets it later; the log filter needs it
    setup_entry_point()
    from tlscale.spec import spec_from_dict
    from tlscale.training.checkpoints import latest_checkpoint
    from tlscale.training.loop import train
    from tlscale.training.run import Run
    from tlscale.training.run_dir import RunDir

    spec = spec_from_dict(yaml.safe_load(config["spec"]))
    marker = Path(spec.output_dir) / MARKER
    if not marker.is_file() or marker.read_text() != config["run_id"]:
        node = ray.get_runtime_context().get_node_id()
        raise ConfigError(f"output_dir: '{spec.output_dir}' is not shared with node {node[:12]}; with runner 'ray' "
                          "it must be on storage every node mounts (NFS, a shared volume)")
    reporter = RayReporter(placement())
    folder = RunDir(spec.output_dir)
    reported = ray.train.get_checkpoint()
    with run_log(folder.path), (reported.as_directory() if reported else nullcontext()) as path:
        if path is not None:  # a restart after a failure: continue from the latest report
            checkpoint, resuming = Path(path), True
        else:
            # A restart whose failure came before Ray registered the last report still finds the run's own
            # checkpoints: the driver refused a non-empty output_dir without --resume, so any there are ours.
            own = latest_checkpoint(folder.path)
            resuming = config["resume"] or own is not None
            checkpoint = own if resuming else None
        run = Run(folder, checkpoint=checkpoint, resuming=resuming, show_progress=False,
                  stop_after_steps=config["stop_after_steps"], publishes=False)
        train(spec, run, reporter)


def placement() -> list[dict]:
    """Rank, node and process of every worker (all ranks take part)."""
    import os

    import ray
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    mine = {"rank": context.get_world_rank(), "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return sorted(everyone, key=lambda w: w["rank"])


class RayRunFailed(WorkerFailed):
    def __init__(self, exc: Exception):
        text = str(exc).strip() or type(exc).__name__
        Exception.__init__(self, f"the Ray training run failed: {text[-3000:]}")
        self.code = 1
