"""Moves jobs along: validating_files -> queued -> running -> succeeded | failed | cancelled.

Two loops in the server process (in every replica). One checks the data of newly created jobs (the same
`tlscale validate` a user runs, once per spec content: a failure is the user's, with its file:line
messages). The other starts queued jobs while there is room (capacity and each team's max_running; the
team with the fewest running jobs first, then priority, then age) on the backend (processes of this host,
or Ray jobs), follows the running ones (events from the run folder, the exit code an attempt leaves
behind) and stops cancelled ones. Every change of a job's row is a compare-and-set, so replicas sharing
the database never start a job twice or add an event twice. Infrastructure failures (a killed worker,
anything but exit 0 or 2) are retried, resuming from the run's checkpoints, up to max_attempts; a user
error (exit 2) never is. A restarted server re-attaches to the attempts still running.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from sqlalchemy import func, select, update

from tlscale.logs import log
from tlscale.service.backends import Backend, LocalAttempts
from tlscale.service.events import add_event
from tlscale.service.jobs import FILE_FIELDS, Settings, job_dir
from tlscale.service.store import Job, Store, StoredFile, Team, now

USER_ERROR = 2  # the CLI's exit code for bad input
TAIL_LINES = 20
START_GRACE_S = 60  # a claim with no attempt behind it after this long is started again (same attempt number)
CANCEL_GRACE_S = 120  # an attempt still running this long after its cancel file is killed


def _stamp(path: str) -> tuple[int, int]:
    """Size and modification time: a server path under an allowed root may change between two jobs."""
    try:
        info = Path(path).stat()
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


class Dispatcher:
    def __init__(self, store: Store, settings: Settings, capacity: int = 1, poll_s: float = 0.5,
                 backend: Backend | None = None):
        self.store, self.settings, self.capacity, self.poll_s = store, settings, capacity, poll_s
        self.backend = backend or LocalAttempts()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._checked: dict[str, subprocess.CompletedProcess] = {}  # validation results by spec content

    # --- the loops ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Two loops: the data checks (seconds per new spec) never hold up starting and following jobs."""
        for name, work in (("tlscale-validator", self._validate_new), ("tlscale-dispatcher", self._dispatch)):
            thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, work) -> None:
        while not self._stop.is_set():
            try:
                work()
            except Exception:  # noqa: BLE001  (the loop must outlive one bad tick; the next one retries)
                log.exception("dispatcher tick failed")
            self._stop.wait(self.poll_s)

    def tick(self) -> None:
        self._validate_new()
        self._dispatch()

    def _dispatch(self) -> None:
        self._follow_running()
        self._start_queued()

    # --- validating_files -> queued | failed ---------------------------------------------------------

    def _validate_new(self) -> None:
        with self.store.session() as session:
            waiting = session.scalars(select(Job).where(Job.state == "validating_files")
                                      .order_by(Job.created_seq).limit(20)).all()
        for job in waiting:
            folder = job_dir(self.settings, job.id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "spec.yaml").write_text(yaml.safe_dump(job.spec, sort_keys=False))
            (folder / "command").write_text(job.command)  # read by the attempt wrapper (on any node)
            checked = self._check(job, folder)
            if checked.returncode == 0:
                self._transition(job.id, "validating_files", "queued", "queued: the data checks passed")
            else:
                reason = self._user_words(job, checked.stderr or checked.stdout)
                kind = "user_error" if checked.returncode == USER_ERROR else "infrastructure"
                self._end(job.id, "failed", f"validation failed: {reason}", kind, from_states=("validating_files",))

    def _check(self, job: Job, folder: Path) -> subprocess.CompletedProcess:
        """`tlscale validate` of the job's spec, once per spec content: uploads are content-addressed, so
        the same spec over the same files (a sweep, a retried submission) has the same answer."""
        from tlscale.tasks.base import data_sections

        files = [(path, *_stamp(path)) for _, data in data_sections(job.spec) for path in map(data.get, FILE_FIELDS)
                 if path]
        key = hashlib.sha256(json.dumps([{**job.spec, "output_dir": None}, files], sort_keys=True).encode()).hexdigest()
        if len(self._checked) > 10_000:
            self._checked.clear()
        if key not in self._checked:
            checked = subprocess.run([sys.executable, "-m", "tlscale", "validate", str(folder / "spec.yaml")],
                                     capture_output=True, text=True, cwd=folder, timeout=600)
            if checked.returncode not in (0, USER_ERROR):
                return checked  # (an infrastructure failure is not an answer to keep)
            self._checked[key] = checked
        checked = self._checked[key]
        # the messages name this job's spec and run folder, not those of the job first checked
        text = {name: re.sub(r"/jobs/ftjob-[0-9a-f]{24}/", f"/jobs/{job.id}/", getattr(checked, name) or "")
                for name in ("stdout", "stderr")}
        return subprocess.CompletedProcess(checked.args, checked.returncode, text["stdout"], text["stderr"])

    def _user_words(self, job: Job, text: str) -> str:
        """The CLI's error lines, with the server's paths put back as the client named them."""
        lines = [line.removeprefix("error: ") for line in text.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(("Traceback", "  "))][-TAIL_LINES:]
        message = "\n".join(lines) or "no message"
        message = message.replace(str(job_dir(self.settings, job.id) / "spec.yaml"), "spec")
        message = message.replace(str(job_dir(self.settings, job.id) / "run"), "output_dir")
        with self.store.session() as session:
            for file_id in job.files:
                stored = session.get(StoredFile, file_id)
                if stored is not None:
                    path = self.settings.files_dir / stored.sha256[:2] / f"{stored.sha256}.{stored.format}"
                    message = message.replace(str(path), f"{file_id} ({stored.filename})")
        return message.replace(str(self.settings.data_dir), "<server>")

    # --- queued -> running -----------------------------------------------------------------------------

    def _start_queued(self) -> None:
        while True:
            with self.store.session() as session:  # a local backend's capacity is this host's
                running = session.scalar(select(func.count()).select_from(Job).where(
                    Job.state == "running", Job.worker.startswith(self.backend.prefix)))
                if running >= self.capacity:
                    return
                job = self._next_job(session)
            if job is None:
                return
            self._launch(job)

    def _next_job(self, session) -> Job | None:
        """Fair share: the team with the fewest running jobs first, then priority, then age."""
        running = dict(session.execute(select(Job.team_id, func.count()).where(Job.state == "running")
                                       .group_by(Job.team_id)).all())
        limits = dict(session.execute(select(Team.id, Team.max_running)).all())
        queued = session.scalars(select(Job).where(Job.state == "queued")
                                 .order_by(Job.priority.desc(), Job.created_seq)).all()
        candidates = [job for job in queued if running.get(job.team_id, 0) < limits.get(job.team_id, 0)]
        if not candidates:
            return None
        return min(candidates, key=lambda j: (running.get(j.team_id, 0), -j.priority, j.created_seq))

    def _launch(self, job: Job) -> None:
        number = job.attempt + 1
        with self.store.session() as session:  # the claim: only one replica's UPDATE finds it queued
            claimed = session.execute(update(Job).where(Job.id == job.id, Job.state == "queued").values(
                state="running", attempt=number, worker=self.backend.claim_mark(now()),
                started_at=func.coalesce(Job.started_at, now()))).rowcount
            session.commit()
        if claimed == 1:
            self._start_attempt(job.id, number)

    def _start_attempt(self, job_id: str, number: int) -> None:
        folder = job_dir(self.settings, job_id)
        resume = (folder / "run" / "checkpoints").is_dir() or (folder / "run" / "metrics.json").is_file()
        worker = self.backend.start(job_id, folder, number, resume)
        with self.store.session() as session:
            row = session.get(Job, job_id)
            row.worker = worker
            add_event(session, job_id, "state", f"running: attempt {number}" + (", resuming" if resume else ""),
                      {"state": "running", "attempt": number})
            session.commit()

    # --- running -> ended ------------------------------------------------------------------------------

    def _follow_running(self) -> None:
        with self.store.session() as session:
            running = session.scalars(select(Job).where(Job.state == "running",
                                                        Job.worker.startswith(self.backend.prefix))).all()
        for job in running:  # (another host's local attempts are followed by that host's dispatcher)
            self._collect_events(job)
            self._collect_checkpoints(job)
            code = self._exit_code(job)
            if code is None:
                if job.cancel_requested:
                    self._cancel(job)
                continue
            self._conclude(job, code)

    def _exit_code(self, job: Job) -> int | None:
        """The attempt's exit code; None while it runs; -1 for one that ended without leaving its code (its
        process or node killed). A claim that never became an attempt (the server died in between) is
        started again under the same attempt number once it is clearly stale."""
        done = job_dir(self.settings, job.id) / f"attempt-{job.attempt}.exit"
        if done.is_file():
            return int(done.read_text())
        state = self.backend.state(job.id, job.attempt, job.worker)
        if state == "running":
            return None
        if state == "ended":
            return int(done.read_text()) if done.is_file() else -1  # (it may have just written it)
        claimed_at = float(job.worker.rsplit(":", 1)[1]) if ":pending:" in job.worker else 0.0
        if now() - claimed_at < START_GRACE_S:
            return None  # (another replica may be starting it right now)
        with self.store.session() as session:  # claimed again by compare-and-set: one replica starts it
            moved = session.execute(update(Job).where(Job.id == job.id, Job.state == "running",
                                                      Job.worker == job.worker)
                                    .values(worker=self.backend.claim_mark(now()))).rowcount
            session.commit()
        if moved == 1:
            log.warning(f"job {job.id}: attempt {job.attempt} was claimed but never started; starting it")
            self._start_attempt(job.id, job.attempt)
        return None

    def _cancel(self, job: Job) -> None:
        """The attempt watches for this file: tlscale checkpoints and stops. Killed if it ignores it."""
        request = job_dir(self.settings, job.id) / "cancel"
        if not request.is_file():
            request.write_text(f"{now():.0f}\n")
        elif now() - request.stat().st_mtime > CANCEL_GRACE_S:
            log.warning(f"job {job.id}: still running {CANCEL_GRACE_S} s after its cancellation; killing it")
            self.backend.kill(job.id, job.attempt, job.worker)
            request.touch()

    def _conclude(self, job: Job, code: int) -> None:
        run = job_dir(self.settings, job.id) / "run"
        if job.cancel_requested:
            self._end(job.id, "cancelled", "cancelled while running")
        elif code == 0 and (run / "metrics.json").is_file():
            self._end(job.id, "succeeded", "succeeded")
        elif code == USER_ERROR:
            self._end(job.id, "failed", self._user_words(job, self._log_tail(job)), "user_error")
        elif job.attempt < self.settings.max_attempts:
            with self.store.session() as session:
                changed = session.execute(update(Job).where(Job.id == job.id, Job.state == "running").values(
                    state="queued", worker=None)).rowcount
                if changed:
                    add_event(session, job.id, "restart", f"attempt {job.attempt} ended (exit {code}): an "
                              "infrastructure failure; queued again, it resumes from its checkpoints",
                              {"exit_code": code, "attempt": job.attempt})
                session.commit()
        else:
            self._end(job.id, "failed", f"attempt {job.attempt} of {self.settings.max_attempts} ended with exit code "
                      f"{code}: {self._log_tail(job)[-2000:]}", "infrastructure")

    def _log_tail(self, job: Job) -> str:
        path = job_dir(self.settings, job.id) / f"attempt-{job.attempt}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        except OSError:
            return ""

    def _collect_events(self, job: Job) -> None:
        """New rows of the run's metrics.jsonl become evaluation and log events, read from the offset kept
        on the job's row; the offset moves by compare-and-set in the same transaction as the events, so two
        replicas following one job (or a restarted server) never add an event twice."""
        rows_file = job_dir(self.settings, job.id) / "run" / "metrics.jsonl"
        try:
            with open(rows_file, "rb") as handle:
                handle.seek(job.events_offset)
                chunk = handle.read()
        except OSError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]
        if not complete:
            return
        with self.store.session() as session:
            if not self._advance(session, job, events_offset=job.events_offset + len(complete)):
                return
            for line in complete.decode(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                scores = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
                if scores:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
                    add_event(session, job.id, "evaluation", f"step {row.get('step')}: {shown}", row)
                elif "train/loss" in row:
                    add_event(session, job.id, "log", f"step {row.get('step')}: loss {row['train/loss']:.4f}", row)
            session.commit()

    def _collect_checkpoints(self, job: Job) -> None:
        """A checkpoint event for each newer checkpoint the run points at (its latest.json)."""
        pointer = job_dir(self.settings, job.id) / "run" / "checkpoints" / "latest.json"
        try:
            latest = json.loads(pointer.read_text())
            step = int(latest["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if step <= job.checkpoint_step:
            return
        with self.store.session() as session:
            if self._advance(session, job, checkpoint_step=step):
                add_event(session, job.id, "checkpoint", f"checkpoint at step {step}",
                          {"step": step, "name": latest.get("checkpoint")})
                session.commit()

    @staticmethod
    def _advance(session, job: Job, **marks: int) -> bool:
        """Move the job's event marks from the values this replica read to new ones; False if another
        replica moved them first (its events are already there)."""
        seen = {key: getattr(job, key) for key in marks}
        moved = session.execute(update(Job).where(Job.id == job.id, *(getattr(Job, k) == v for k, v in seen.items()))
                                .values(**marks)).rowcount
        if moved != 1:
            session.rollback()
            return False
        for key, value in marks.items():
            setattr(job, key, value)
        return True

    # --- state changes ---------------------------------------------------------------------------------

    def _transition(self, job_id: str, old: str, new: str, message: str) -> bool:
        with self.store.session() as session:
            changed = session.execute(update(Job).where(Job.id == job_id, Job.state == old).values(state=new)).rowcount
            if changed:
                add_event(session, job_id, "state", message, {"state": new})
            session.commit()
        return bool(changed)

    def _end(self, job_id: str, state: str, message: str, kind: str | None = None,
             from_states: tuple[str, ...] = ("running",)) -> None:
        with self.store.session() as session:
            changed = session.execute(update(Job).where(Job.id == job_id, Job.state.in_(from_states)).values(
                state=state, finished_at=now(), error=message if state == "failed" else None,
                error_kind=kind)).rowcount
            if changed:
                add_event(session, job_id, "state", f"{state}: {message}" if state != "succeeded" else state,
                          {"state": state, "error_kind": kind})
            session.commit()
