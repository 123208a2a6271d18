"""A job's event log: state changes, log lines, evaluations, checkpoints, restarts, numbered per job."""
from __future__ import annotations

from sqlalchemy import func, select

from tlscale.service.store import JobEvent, now


def add_event(session, job_id: str, kind: str, message: str, data: dict | None = None) -> JobEvent:
    last = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
    event = JobEvent(job_id=job_id, seq=(last or 0) + 1 if last is not None else 0, created_at=now(), kind=kind,
                     message=message, data=data or {})
    session.add(event)
    session.flush()
    return event
