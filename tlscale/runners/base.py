"""Runners: where a spec's training runs (this process, N local processes, a Ray cluster). A runner
claims the run folder, settles --resume/--overwrite, runs the loop and publishes metrics.json last.
One registry; `spec.runner` names the entry (a service dispatcher registers here too);
tlscale.runners.run_training dispatches."""
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


class WorkerFailed(Exception):
    def __init__(self, code: int):
        self.code = code
        super().__init__(f"training failed in a worker process (exit code {code}); its error is shown above")
