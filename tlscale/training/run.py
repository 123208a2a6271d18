"""What a runner hands the loop: this process's part of a run, already decided.

The runner claims the folder, settles --resume/--overwrite, picks the checkpoint to continue from
and says where the final metrics go; the entry point (CLI, worker) turns SIGTERM into a stop
request. The loop only reads these, so a new runner (a service dispatcher, a ladder) needs no loop
change.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tlscale.training.run_dir import RunDir


class StopRequest:
    """Set by a signal handler at the entry point; the loop checkpoints at its next step and stops
    (a launcher forwards it to its workers)."""

    def __init__(self):
        self.count = 0

    @property
    def requested(self) -> bool:
        return self.count > 0

    def set(self, *_) -> None:
        self.count += 1


@contextmanager
def stop_on_signals(stop: StopRequest, interrupt_on_second: bool = True):
    """For entry points only: the first SIGTERM or Ctrl-C asks for a checkpoint and a clean stop (exit 0);
    a second one interrupts at once. Previous handlers come back afterwards."""

    def handle(signum, frame):
        stop.set()
        if interrupt_on_second and stop.count > 1:
            raise KeyboardInterrupt

    try:
        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (Ray runs the loop in a thread): the scheduler signals instead
        yield stop
        return
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Run:
    dir: RunDir
    checkpoint: Path | None = None  # continue from this checkpoint folder
    resuming: bool = False  # --resume: rows logged after the checkpoint are dropped, then logged again
    stop_after_steps: int | None = None  # checkpoint and stop here (as a preemption would)
    show_progress: bool = True
    stop: StopRequest = field(default_factory=StopRequest)
    publishes: bool = True  # False: a launched worker; its launcher verifies the model and publishes

    @property
    def path(self) -> Path:
        return self.dir.path

    def publish(self, metrics: dict) -> None:
        """The last write of the loop (rank 0): metrics.json completes the run, or the launcher will."""
        if self.publishes:
            self.dir.write_metrics(metrics)
        else:
            self.dir.write_pending_metrics(metrics)


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict
    interrupted: bool = False


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
