"""Runners: where a spec's training runs (this process, N local processes, a Ray cluster). A runner
claims the run folder, settles --resume/--overwrite, runs the loop and publishes metrics.json last.
One registry; `spec.runner` names the entry (a service dispatcher registers here too)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tlscale.registry import Registry
from tlscale.spec import JobSpec
from tlscale.training.run import RunResult, StopRequest


@dataclass
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    stop_after_steps: int | None = None
    show_progress: bool = True
    stop: StopRequest = field(default_factory=StopRequest)  # set by the entry point's signal handler


Runner = Callable[[JobSpec, RunOptions], "RunResult | None"]  # None: stopped early, checkpoint written
RUNNERS: Registry[Runner] = Registry("runner")


def run_training(spec: JobSpec, options: RunOptions | None = None, **settings) -> RunResult | None:
    """Run a spec with the runner it names. settings: RunOptions fields (resume=True, ...)."""
    import tlscale.runners.local  # noqa: F401  (registers the built-in runners)
    import tlscale.runners.ray_runner  # noqa: F401

    return RUNNERS.get(spec.runner, field="runner")(spec, options or RunOptions(**settings))


class WorkerFailed(Exception):
    def __init__(self, code: int):
        self.code = code
        super().__init__(f"training failed in a worker process (exit code {code}); its error is shown above")
