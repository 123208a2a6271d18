"""Where a service job's attempts run: processes on this host, or Ray Jobs on a cluster.

Both run the same attempt wrapper (`tlscale.service.attempt`) in the job's folder. It leaves the exit code
in attempt-N.exit and stops the run when a `cancel` file appears there, so following, cancelling and
telling failures apart work the same way on both, and the folder is all a restarted server needs. With
Ray, the server's data dir must be storage the cluster's nodes mount at the same path, and only the
server holds the Ray token (RAY_AUTH_TOKEN in its environment): clients talk to the server alone.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal, Protocol

from tlscale.errors import ConfigError, require

HOST = socket.gethostname()
State = Literal["running", "ended", "missing"]


def attempt_command(folder: Path, number: int, resume: bool) -> list[str]:
    return ["-m", "tlscale.service.attempt", str(folder), str(number)] + (["--resume"] if resume else [])


class Backend(Protocol):
    runner: str  # the spec's runner for jobs on this backend
    prefix: str  # of the worker column of the attempts this server follows (another host's are its own)

    def claim_mark(self, claimed_at: float) -> str:
        """What the job's worker column says between the claim and the start."""

    def start(self, job_id: str, folder: Path, number: int, resume: bool) -> str:
        """Start attempt `number`; the worker column's value."""

    def state(self, job_id: str, number: int, worker: str) -> State:
        """running, ended (with or without an exit file), or missing (never started)."""

    def kill(self, job_id: str, number: int, worker: str) -> None:
        """The last resort for an attempt that ignores its cancel file."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of pid (with the pid, it names one process for good), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class LocalAttempts:
    """Attempts as processes of this host, in their own session (they outlive a killed server). The worker
    column is HOST:pid:start-time, so a restarted server knows its attempt from a recycled pid."""
    runner = "local"
    prefix = f"{HOST}:"

    def __init__(self) -> None:
        self._children: dict[str, subprocess.Popen] = {}  # started here: reaped here

    def claim_mark(self, claimed_at: float) -> str:
        return f"{HOST}:pending:{claimed_at:.0f}"

    def start(self, job_id: str, folder: Path, number: int, resume: bool) -> str:
        child = subprocess.Popen([sys.executable, *attempt_command(folder, number, resume)], cwd=folder,
                                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        self._children[job_id] = child
        return f"{HOST}:{child.pid}:{_process_start(child.pid)}"

    def state(self, job_id: str, number: int, worker: str) -> State:
        child = self._children.get(job_id)
        if child is not None and child.poll() is not None:
            self._children.pop(job_id)
        _, pid, started = worker.split(":", 2)
        if pid == "pending":
            return "missing"
        return "running" if _process_start(int(pid)) == started else "ended"

    def kill(self, job_id: str, number: int, worker: str) -> None:
        _, pid, started = worker.split(":", 2)
        if pid.isdigit() and _process_start(int(pid)) == started:
            os.killpg(int(pid), signal.SIGKILL)


class RayJobAttempts:
    """Attempts as Ray jobs. The submission id is the job id and the attempt number, so a server that died
    between its claim and Ray's answer finds the job Ray has (or submits it then) and never starts a second
    copy; Ray refuses a second submission under one id."""
    runner = "ray"
    prefix = "ray:"

    def __init__(self, address: str):
        require("ray", "ray")
        from ray.job_submission import JobSubmissionClient

        try:
            self.client = JobSubmissionClient(address)
        except Exception as exc:  # noqa: BLE001  (refused, wrong scheme, auth: all mean "cannot use it")
            raise ConfigError(f"--ray-address: cannot reach a Ray job server at '{address}': "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    @staticmethod
    def submission_id(job_id: str, number: int) -> str:
        return f"tlscale-{job_id}-attempt-{number}"

    def claim_mark(self, claimed_at: float) -> str:
        return f"ray:pending:{claimed_at:.0f}"

    def start(self, job_id: str, folder: Path, number: int, resume: bool) -> str:
        import shlex

        submission = self.submission_id(job_id, number)
        try:
            self.client.submit_job(entrypoint=shlex.join(["python", *attempt_command(folder, number, resume)]),
                                   submission_id=submission, metadata={"tlscale_job": job_id,
                                                                       "tlscale_attempt": str(number)})
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
        return f"ray:{submission}"

    def state(self, job_id: str, number: int, worker: str) -> State:
        try:
            status = str(self.client.get_job_status(self.submission_id(job_id, number)).value)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return "missing"
            raise
        return "ended" if status in ("SUCCEEDED", "FAILED", "STOPPED") else "running"

    def kill(self, job_id: str, number: int, worker: str) -> None:
        self.client.stop_job(self.submission_id(job_id, number))


def make_backend(ray_address: str | None) -> Backend:
    return RayJobAttempts(ray_address) if ray_address else LocalAttempts()
