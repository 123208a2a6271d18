"""Run a spec on several local processes: one worker per process (tlscale.runners.worker), each running
the same training loop, with the environment torch.distributed reads (RANK, WORLD_SIZE, MASTER_*).

We start the workers ourselves rather than through torchrun so that signals mean what they mean for a
one-process run: SIGTERM or Ctrl-C to `tlscale train` reaches every worker, which checkpoint at the next
step and exit 0; a second one stops them at once. If this process dies (even by SIGKILL), the kernel
sends each worker SIGTERM (PR_SET_PDEATHSIG), so none is left running unsignalled. One failing worker
stops the others (they would wait forever in a collective). Workers inherit the run folder's lock, so
the folder stays locked until the last of them has exited.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlscale.logs import log
from tlscale.spec import JobSpec, dump_spec
from tlscale.training.run import StopRequest

PARENT_VARIABLE = "TLSCALE_LAUNCHER_PID"
GRACE_S = 10.0  # after a worker fails, how long the others get to notice before they are killed


def extensions_dir() -> str:
    """Where DeepSpeed compiles its CPU ops (comm, Adam) on first use: once per machine, shared by every
    runner. A compile killed halfway leaves a lock that makes later ones wait, so one place matters."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "tlscale" / "torch_extensions")


def op_build_env() -> dict[str, str]:
    """What a process that may compile DeepSpeed ops needs in its environment: the shared extensions folder,
    and the ninja of this Python environment first on PATH. torch runs whichever `ninja` PATH finds, and
    two ninja versions (pip's 1.13 in the environment, the system's 1.11) hash commands differently: each
    took the other's build for stale, so every switch between Ray workers (PATH with the environment's bin)
    and local workers (without) recompiled the ops, 35-50 s each time."""
    env = {"TORCH_EXTENSIONS_DIR": extensions_dir()}
    own_bin = Path(sys.executable).parent
    path = os.environ.get("PATH", "")
    if (own_bin / "ninja").is_file() and path.split(os.pathsep)[0] != str(own_bin):
        env["PATH"] = os.pathsep.join([str(own_bin), *(p for p in path.split(os.pathsep) if p != str(own_bin))])
    return env


STALE_BUILD_LOCK_S = 900  # a compile of DeepSpeed's CPU ops takes 1-3 minutes here


def clear_stale_build_locks(root: str, older_than_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """A DeepSpeed op compile killed halfway leaves ROOT/<op>/lock behind, and torch then waits for it
    forever: every later DeepSpeed run would hang at start. Locks far older than any compile are removed."""
    removed = []
    for lock in Path(root).glob("*/lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age > older_than_s:
                lock.unlink()
                removed.append(lock)
                log.warning(f"removed {lock}: left by a DeepSpeed op build {age / 60:.0f} minutes ago that never "
                            "finished (it would make this run wait forever)")
        except FileNotFoundError:
            pass
    return removed


def launch_local(spec: JobSpec, nproc: int, resume: bool, stop_after_steps: int | None, show_progress: bool,
                 lock_fd: int | None = None, stop: StopRequest | None = None) -> int:
    """Returns 0, 2 (a worker rejected its input) or the failing worker's exit code. A stop request (the
    entry point's SIGTERM or Ctrl-C) reaches the workers as SIGTERM: they checkpoint and exit 0."""
    if spec.distributed.backend == "deepspeed":
        clear_stale_build_locks(extensions_dir())
    with tempfile.TemporaryDirectory(prefix="tlscale-launch-") as tmp:
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(dump_spec(spec))
        command = [sys.executable, "-m", "tlscale.runners.worker", str(spec_file)]
        if resume:
            command.append("--resume")
        if stop_after_steps is not None:
            command += ["--stop-after-steps", str(stop_after_steps)]
        if not show_progress:
            command.append("--no-progress")
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **op_build_env(),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), PARENT_VARIABLE: str(os.getpid())}
        return _supervise(command, env, nproc, () if lock_fd is None else (lock_fd,), stop or StopRequest())


def _supervise(command: list[str], env: dict, nproc: int, pass_fds: tuple[int, ...], stop: StopRequest) -> int:
    workers: list[subprocess.Popen] = []
    try:
        for rank in range(nproc):
            workers.append(subprocess.Popen(
                command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, pass_fds=pass_fds,
                start_new_session=True))  # Ctrl-C reaches only us; we decide what the workers get
        return _wait(workers, stop)
    finally:
        _signal_all(workers, signal.SIGKILL)  # only reaches workers still running (an exception above)
        for worker in workers:
            worker.wait()


def _wait(workers: list[subprocess.Popen], stop: StopRequest) -> int:
    """Wait for every worker; the first failure stops the rest; a stop request is passed on."""
    failed_at, forwarded = None, 0
    while True:
        codes = [w.poll() for w in workers]
        if all(c is not None for c in codes):
            break
        if stop.count > forwarded:
            forwarded = stop.count
            if forwarded == 1:
                log.warning("stopping: the workers checkpoint at their next step (again to stop them at once)")
            _signal_all(workers, signal.SIGTERM if forwarded == 1 else signal.SIGKILL)
        bad = [c for c in codes if c not in (None, 0)]
        if bad and failed_at is None:
            failed_at = time.monotonic()
            _signal_all(workers, signal.SIGTERM)
        elif failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            _signal_all(workers, signal.SIGKILL)
        time.sleep(0.1)
    if 2 in codes:
        return 2
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    return bad[0] if bad[0] > 0 else 128 - bad[0]


def _signal_all(workers: list[subprocess.Popen], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            try:
                worker.send_signal(signum)
            except ProcessLookupError:
                pass


def die_with_launcher() -> None:
    """In a worker, first thing: SIGTERM when the launcher dies, however it dies (Linux; elsewhere the
    worker only checks at start). Done here rather than between fork and exec, which is unsafe with threads."""
    launcher = os.environ.get(PARENT_VARIABLE)
    if not launcher:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
    if os.getppid() != int(launcher):  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
