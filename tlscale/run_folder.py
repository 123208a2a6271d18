"""A run folder belongs to one run at a time and holds only what tlscale wrote.

`claim()` is the first thing a runner does, before loading anything: it takes an exclusive lock
(flock on OUTPUT/.tlscale.lock, released by the kernel when the holder dies, so a lock left by a
killed run is detected as stale and taken over), writes a marker saying tlscale created the folder,
and decides what --resume and --overwrite mean for what is already there. `--overwrite` never deletes
anything up front: the previous run moves into OUTPUT/.replaced and comes back if the new run fails; it
is deleted only when the new run has finished. Commands that write results elsewhere use
`refuse_run_files()` so they never replace a run's own files.
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from tlscale.errors import RunStateError
from tlscale.logs import RUN_LOG

log = logging.getLogger("tlscale")

LOCK = ".tlscale.lock"
MARKER = ".tlscale-run"
REPLACED = ".replaced"
PENDING_METRICS = ".metrics-pending.json"
BOOKKEEPING = (LOCK, MARKER)
# Every top-level name a run (trained, few-shot or Ray) writes; a test checks real runs against it.
RUN_FILES = (
    LOCK, MARKER, REPLACED, PENDING_METRICS, "spec.yaml", "metrics.json", "metrics.jsonl", "model", "model-adapter",
    "checkpoints", "eval", "tasks", "predictions.jsonl", "predictions-seed*.jsonl", "prompts.jsonl", "generations.jsonl",
    "confusion_matrix.png", "reliability.png", "learning_curve.png", "tensorboard", "mlflow.db", "mlruns", "wandb", "ray", ".ray-run-id", "train.log", ".*.tmp", ".tmp-*", ".*.old", "*.tmp",
)


def is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def is_run_folder(path: Path) -> bool:
    """A folder tlscale created for a run (or, from before markers existed, one holding a run's spec)."""
    path = Path(path)
    return path.is_dir() and ((path / MARKER).is_file() or
                              ((path / "spec.yaml").is_file() and ((path / "metrics.json").exists() or
                                                                   (path / "checkpoints").is_dir())))


def finished(path: Path) -> bool:
    """metrics.json is written last: a run without it resumes, a run with it is complete."""
    return (Path(path) / "metrics.json").is_file()


def refuse_run_files(target: Path, option: str) -> None:
    """Results of eval/predict/export/fewshot/schema never replace a training run's own files."""
    target = Path(target)
    for folder in [target, *target.parents]:
        if folder != target and target.relative_to(folder).parts[0] == "eval":
            continue  # RUN/eval is where `tlscale eval` writes by default; it is not the run's own result
        if folder != target and is_run_folder(folder) and target.exists():
            raise RunStateError(f"{option}: '{target}' belongs to the run in '{folder}'; refusing to replace it. "
                                "Write the results to a new path")
        if folder == target and target.is_dir() and is_run_folder(target):
            raise RunStateError(f"{option}: '{target}' is a run folder; its metrics and files would be replaced. "
                                f"Use a new folder (e.g. {target / 'eval'})")


def result_file(target: Path, option: str) -> Path:
    """A file a command writes results to: not a folder, not a run's own file; its folder is created."""
    target = Path(target)
    if target.is_dir():
        raise RunStateError(f"{option}: '{target}' is a folder; expected a file path")
    refuse_run_files(target, option)
    _make_folder(target.parent, option)
    return target


def result_folder(target: Path, option: str) -> Path:
    """A folder a command writes results into: not a file, not a run folder (whose files it would replace)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise RunStateError(f"{option}: '{target}' is a file; expected a folder")
    refuse_run_files(target, option)
    _make_folder(target, option)
    return target


def _make_folder(folder: Path, option: str) -> None:
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunStateError(f"{option}: '{parent}' is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunStateError(f"{option}: cannot create the folder '{folder}' ({exc.strerror})") from None


def check_folder_shape(path: Path, field: str = "output_dir") -> Path:
    """The folder can be a run's: not a file, not under a file, not the current directory or above it."""
    path = Path(path)
    if str(path).strip() == "":
        raise RunStateError(f"{field}: empty path; give a folder for the run, e.g. runs/NAME")
    resolved = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved in (home, Path(resolved.anchor)):
        what = "the current directory" if resolved == cwd else "a folder holding the current directory" \
            if resolved in cwd.parents else "your home folder" if resolved == home else "the filesystem root"
        raise RunStateError(f"{field}: '{path}' is {what}; a run needs a folder of its own, e.g. runs/NAME "
                            "(is a ${VARIABLE} in it empty?)")
    for folder in [resolved, *resolved.parents]:
        if folder.exists() and not folder.is_dir():
            where = "is a file" if folder == resolved else f"is under '{folder}', which is a file"
            raise RunStateError(f"{field}: '{path}' {where}; expected a folder")
    return resolved


def check_output_dir(path: Path) -> None:
    """What `validate` can tell about output_dir without claiming it: its shape and what it holds."""
    check_folder_shape(path)
    _foreign_files_refused(Path(path))


class RunClaim:
    """Holds the lock of one run folder. A claim is passed down to workers (fd inheritance) so the lock
    lasts as long as any process of the run lives."""

    def __init__(self, path: Path, fd: int, created: bool, replaced: bool):
        self.path, self.fd, self.created, self.replaced = path, fd, created, replaced

    def succeeded(self) -> None:
        """The new run is complete: the run it replaced can go."""
        aside = self.path / REPLACED
        if aside.exists():
            shutil.rmtree(aside)
        self.replaced = False

    def failed(self) -> None:
        """The new run failed: put back the run that --overwrite moved aside."""
        if self.replaced and (self.path / REPLACED).is_dir():
            _discard_run_files(self.path)
            _move_entries(self.path / REPLACED, self.path)
            (self.path / REPLACED).rmdir()
            log.warning(f"the run that was in '{self.path}' before --overwrite is back in place")
            self.replaced = False

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.created and all(p.name in (*BOOKKEEPING, RUN_LOG) for p in self.path.iterdir()):
                shutil.rmtree(self.path)  # nothing but notes was written: leave no folder behind
            else:
                os.ftruncate(self.fd, 0)  # a lock file that names a holder afterwards was left by a killed run
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is not None and not issubclass(kind, KeyboardInterrupt):
                self.failed()
        finally:
            self.release()


def claim(path: Path, resume: bool = False, overwrite: bool = False) -> RunClaim:
    """Lock the run folder and settle what is in it; refuse anything that could lose a user's data."""
    if resume and overwrite:
        raise RunStateError("--resume and --overwrite contradict each other; choose one")
    path = Path(path)
    check_folder_shape(path)
    created = not path.exists()
    _foreign_files_refused(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunStateError(f"output_dir: cannot create '{path}' ({exc.strerror})") from None
    fd = _lock(path)
    try:
        replaced = _settle(path, resume, overwrite)
        if not (path / MARKER).exists():
            (path / MARKER).write_text(json.dumps({"created_by": "tlscale", "time": _now()}) + "\n")
    except BaseException:
        RunClaim(path, fd, created, False).release()
        raise
    return RunClaim(path, fd, created, replaced)


def _settle(path: Path, resume: bool, overwrite: bool) -> bool:
    """Returns True when an earlier run was moved aside (restored if this one fails)."""
    started = any(p.name not in (*BOOKKEEPING, REPLACED) for p in path.iterdir())
    done = finished(path)
    if started and not (resume or overwrite):
        raise RunStateError(f"output_dir: '{path}' already holds a {'finished' if done else 'started'} run. "
                            "Use --resume to continue it, --overwrite to replace it, or set output_dir=NEW_DIR")
    if resume and done:
        raise RunStateError(f"output_dir: the run in '{path}' has finished; nothing to resume")
    if not overwrite or not started:
        return False
    aside = path / REPLACED
    if aside.is_dir() and not done:
        # An earlier --overwrite did not finish: keep the run it set aside, drop the unfinished one.
        _discard_run_files(path)
        log.warning(f"output_dir: discarded the unfinished run in '{path}'; the run before it stays in {aside} "
                    "until this one finishes")
        return True
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    _move_entries(path, aside, skip=(REPLACED, *BOOKKEEPING))
    log.warning(f"output_dir: the previous run in '{path}' is kept in {aside} until this run finishes")
    return True


def _foreign_files_refused(path: Path) -> None:
    if not path.is_dir():
        return
    foreign = sorted(p.name for p in path.iterdir() if not is_run_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise RunStateError(f"output_dir: '{path}' holds files tlscale did not write ({shown}); a run folder "
                            "must be new, empty or an earlier run's. Choose another output_dir")


def _discard_run_files(path: Path) -> None:
    for entry in path.iterdir():
        if entry.name in (REPLACED, *BOOKKEEPING):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _move_entries(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    for entry in list(source.iterdir()):
        if entry.name not in skip:
            os.replace(entry, target / entry.name)


def _lock(path: Path) -> int:
    """flock the lock file; the holder's pid and host are in it for the message a second run gets."""
    lock_file = path / LOCK
    for _ in range(5):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            deadline = time.monotonic() + 1.0
            while not holder and time.monotonic() < deadline:  # the holder writes its name just after locking
                time.sleep(0.02)
                holder = _read_holder(fd)
            os.close(fd)
            raise RunStateError(f"output_dir: '{path}' is in use by another run ({_describe(holder)}); wait for "
                                "it to end, or choose another output_dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the folder was removed and made again while we waited for the lock: try again
            os.close(fd)
            continue
        previous = _read_holder(fd)
        if previous.get("pid") and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            log.warning(f"output_dir: took over a stale lock in '{path}' ({_describe(previous)}, no longer running)")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return fd
    raise RunStateError(f"output_dir: could not lock '{path}': it keeps being removed and created again")


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    command = f", `{holder['command']}`" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}{command}"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
