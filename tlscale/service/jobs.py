"""What the API does with jobs, apart from HTTP: turn a submitted spec into a job the dispatcher can run
(file ids resolved to this team's uploads, server paths only under the allowed roots, the run folder the
server's), admit it under the team's quotas, list, read and cancel it."""
from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tlscale.errors import ConfigError
from tlscale.service.store import ENDED, Job, JobEvent, StoredFile, Store, Team, new_id, now

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
FILE_FIELDS = ("train_file", "eval_file")


class QuotaExceeded(Exception):
    def __init__(self, quota: str, limit: float, message: str):
        super().__init__(message)
        self.quota, self.limit = quota, limit


class NotFound(Exception):
    pass


@dataclass
class Settings:
    data_dir: Path
    allowed_roots: list[Path] = field(default_factory=list)  # server paths a spec may name (shared storage)
    runner: str = "local"
    max_upload_bytes: int = 512 * 1024 * 1024
    max_attempts: int = 3  # an infrastructure failure is retried, resuming, until this many attempts

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def resolve_spec(raw: Any, team: Team, store: Store, settings: Settings, job_id: str) -> tuple[dict, list[str]]:
    """(the spec as the server will run it, the file ids it uses). ConfigError names each problem."""
    from tlscale.spec import spec_from_dict

    if not isinstance(raw, dict):
        raise ConfigError(f"spec: expected a mapping (task, model, data, ...), found {type(raw).__name__}")
    import copy

    from tlscale.tasks.base import data_sections

    raw = {**copy.deepcopy(raw), "output_dir": str(job_dir(settings, job_id) / "run")}  # the server's folder
    used, problems = [], []
    for where, data in data_sections(raw):  # `data`, or each multi_task task's
        for key in FILE_FIELDS:
            value = data.get(key)
            if not isinstance(value, str):
                continue
            if FILE_ID.match(value):
                stored = _team_file(store, team, value)
                if stored is None:
                    problems.append(f"{where}.{key}: no file '{value}' (upload it with POST /v1/files)")
                else:
                    data[key] = str(settings.files_dir / stored.sha256[:2] / f"{stored.sha256}.{stored.format}")
                    used.append(value)
            elif not _under_allowed_root(value, settings.allowed_roots):
                problems.append(f"{where}.{key}: expected a file id from POST /v1/files"
                                + (" or a path under " + ", ".join(map(str, settings.allowed_roots))
                                   if settings.allowed_roots else "") + f", found {value!r}")
    if raw.get("runner") in (None, "local", settings.runner):  # "local" is every spec's default
        raw["runner"] = settings.runner
    else:
        problems.append(f"runner: this server runs jobs with runner '{settings.runner}', found {raw.get('runner')!r}")
    resources = raw.get("resources")
    for key in ("address", "storage_path"):  # the server's to choose: the cluster and its shared storage
        if isinstance(resources, dict) and resources.get(key) is not None:
            problems.append(f"resources.{key}: chosen by the server; remove it")
    if problems:
        raise ConfigError(problems)
    spec = spec_from_dict(raw, source="spec")
    return spec.model_dump(mode="json"), used


def _team_file(store: Store, team: Team, file_id: str) -> StoredFile | None:
    with store.session() as session:
        stored = session.get(StoredFile, file_id)
    return stored if stored is not None and stored.team_id == team.id else None


def _under_allowed_root(value: str, roots: list[Path]) -> bool:
    if not roots or "\x00" in value:
        return False
    path = Path(value)
    if not path.is_absolute():
        return False
    resolved = path.resolve()  # symlinks and '..' cannot leave the root
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def month_start() -> float:
    today = datetime.datetime.now(datetime.timezone.utc)
    return today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def compute_hours(session, team_id: str) -> float:
    """Process-hours of this team's jobs that started this calendar month (UTC)."""
    jobs = session.scalars(select(Job).where(Job.team_id == team_id, Job.started_at.is_not(None),
                                             Job.started_at >= month_start())).all()
    total = 0.0
    for job in jobs:
        total += job_processes(job.spec) * ((job.finished_at or now()) - job.started_at) / 3600
    return total


def job_processes(spec: dict) -> int:
    """Training processes a job holds: its local processes, or its Ray workers."""
    if spec.get("runner") == "ray":
        return max(1, int((spec.get("resources") or {}).get("num_workers", 1)))
    return max(1, int((spec.get("distributed") or {}).get("num_processes", 1)))


def usage(store: Store, team: Team) -> dict:
    with store.session() as session:
        counts = dict(session.execute(select(Job.state, func.count()).where(Job.team_id == team.id)
                                      .group_by(Job.state)).all())
        used = compute_hours(session, team.id)
    return {"month_start": datetime.datetime.fromtimestamp(month_start(), datetime.timezone.utc).isoformat(),
            "compute_hours": round(used, 4), "running": counts.get("running", 0),
            "waiting": counts.get("validating_files", 0) + counts.get("queued", 0),
            "quotas": {"max_running": team.max_running, "max_queued": team.max_queued,
                       "max_compute_hours": team.max_compute_hours}}


def admit(session, team: Team) -> None:
    waiting = session.scalar(select(func.count()).select_from(Job).where(
        Job.team_id == team.id, Job.state.in_(("validating_files", "queued"))))
    if waiting >= team.max_queued:
        raise QuotaExceeded("max_queued", team.max_queued,
                            f"quota max_queued: the team has {waiting} jobs waiting, its limit is {team.max_queued}")
    used = compute_hours(session, team.id)
    if used >= team.max_compute_hours:
        raise QuotaExceeded("max_compute_hours", team.max_compute_hours,
                            f"quota max_compute_hours: the team used {used:.2f} of its {team.max_compute_hours:g} "
                            "compute-hours this month")


def create_job(store: Store, settings: Settings, team: Team, raw_spec: Any, *, metadata: dict | None = None,
               priority: int = 0, idempotency_key: str | None = None, command: str = "train") -> tuple[Job, bool]:
    """(job, created): an Idempotency-Key already used by the team returns its job, created False."""
    if idempotency_key is not None:
        existing = _by_key(store, team, idempotency_key)
        if existing is not None:
            return existing, False
    job_id = new_id("ftjob")
    spec, files = resolve_spec(raw_spec, team, store, settings, job_id)
    with store.session() as session:
        admit(session, team)
        job = Job(id=job_id, created_seq=time.time_ns(), team_id=team.id, state="validating_files", command=command,
                  spec=spec,
                  files=files, job_metadata=metadata or {}, priority=priority, idempotency_key=idempotency_key,
                  created_at=now(), attempt=0, cancel_requested=False)
        session.add(job)
        session.add(JobEvent(job_id=job_id, seq=0, created_at=now(), kind="state",
                             message="validating_files: checking the spec's data", data={"state": "validating_files"}))
        try:
            session.commit()
        except IntegrityError:  # the same key, created a moment ago by a concurrent request
            session.rollback()
            existing = _by_key(store, team, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
    return job, True


def _by_key(store: Store, team: Team, key: str) -> Job | None:
    with store.session() as session:
        return session.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == key))


def get_job(store: Store, team: Team, job_id: str) -> Job:
    with store.session() as session:
        job = session.get(Job, job_id)
    if job is None or job.team_id != team.id:  # another team's job does not exist for this caller
        raise NotFound(f"no job '{job_id}'")
    return job


def list_jobs(store: Store, team: Team, after: str | None, limit: int,
              metadata: dict[str, str] | None = None) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last id of the previous page."""
    with store.session() as session:
        query = select(Job).where(Job.team_id == team.id)
        if after is not None:
            anchor = session.get(Job, after)
            if anchor is None or anchor.team_id != team.id:
                raise NotFound(f"after: no job '{after}'")
            query = query.where((Job.created_seq < anchor.created_seq)
                                | ((Job.created_seq == anchor.created_seq) & (Job.id < anchor.id)))
        query = query.order_by(Job.created_seq.desc(), Job.id.desc())
        if metadata:
            jobs = [j for j in session.scalars(query).all()
                    if all(str(j.job_metadata.get(k)) == v for k, v in metadata.items())]
        else:
            jobs = session.scalars(query.limit(limit + 1)).all()
    return jobs[:limit], len(jobs) > limit


def queue_position(store: Store, job: Job) -> tuple[int | None, int]:
    """(1-based place among its team's waiting jobs in dispatch order, or None once started; the jobs of
    every team waiting to start)."""
    waiting = ("validating_files", "queued")
    with store.session() as session:
        depth = session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(waiting)))
        if job.state not in waiting:
            return None, depth
        ahead = session.scalar(select(func.count()).select_from(Job).where(
            Job.team_id == job.team_id, Job.state.in_(waiting), Job.id != job.id,
            (Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.created_seq < job.created_seq))))
    return ahead + 1, depth


def cancel_job(store: Store, team: Team, job_id: str) -> Job:
    """A waiting job is cancelled at once and never starts; a running one is stopped by the dispatcher."""
    for attempt in range(3):
        try:
            return _cancel(store, team, job_id)
        except IntegrityError:  # the dispatcher numbered an event of this job at the same moment: again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _cancel(store: Store, team: Team, job_id: str) -> Job:
    from tlscale.service.events import add_event

    with store.session() as session:
        job = session.get(Job, job_id, with_for_update=not store.is_sqlite)
        if job is None or job.team_id != team.id:
            raise NotFound(f"no job '{job_id}'")
        if job.state in ENDED:
            return job
        if job.state in ("validating_files", "queued"):
            job.state, job.finished_at = "cancelled", now()
            add_event(session, job.id, "state", "cancelled before it started", {"state": "cancelled"})
        else:
            job.cancel_requested = True
            add_event(session, job.id, "state", "cancellation requested: stopping the run", {})
        session.commit()
        return job


def events(store: Store, team: Team, job_id: str, after: int | None, limit: int) -> tuple[list[JobEvent], bool]:
    get_job(store, team, job_id)
    with store.session() as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            query = query.where(JobEvent.seq > after)
        rows = session.scalars(query.order_by(JobEvent.seq).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit
