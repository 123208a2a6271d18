"""Several servers sharing one database (API replicas): each job is started once, each event added once, a
claim whose server died before starting it is started again once. Two dispatchers tick at the same time
from threads over the same store, on SQLite and on PostgreSQL; the backend records what it is asked to
start instead of training (the real backends are exercised in test_api.py, test_restart.py and the Ray
tests)."""
from __future__ import annotations

import json
import threading
import time

import pytest


class RecordingBackend:
    runner, prefix = "local", "test:"

    def __init__(self, started: list):
        self.started = started

    def claim_mark(self, claimed_at: float) -> str:
        return f"test:pending:{claimed_at:.0f}"

    def start(self, job_id, folder, number, resume) -> str:
        self.started.append((job_id, number))
        return f"test:{job_id}:{number}"

    def state(self, job_id, number, worker) -> str:
        return "missing" if ":pending:" in worker else "running"

    def kill(self, job_id, number, worker) -> None:
        raise AssertionError("nothing is cancelled here")


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(request, tmp_path):
    """(store, settings, two dispatchers, the attempts they started) over one fresh database."""
    import sqlalchemy

    from tlscale.service.dispatcher import Dispatcher
    from tlscale.service.jobs import Settings
    from tlscale.service.store import Store

    if request.param == "postgresql":
        base = request.getfixturevalue("postgres_url")
        name = f"replicas{abs(hash(request.node.name)) % 10**8}"
        with sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = base.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp_path / 'tlscale.db'}"
    store, started = Store(url), []
    settings = Settings(data_dir=tmp_path / "data")
    pair = [Dispatcher(store, settings, capacity=50, backend=RecordingBackend(started)) for _ in range(2)]
    yield store, settings, pair, started
    store.close()


def add_jobs(store, count: int, **values) -> list[str]:
    from sqlalchemy import update

    from tlscale.service.store import Job, Team, new_id, now
    from tlscale.service.teams import create_team

    team, _ = create_team(store, f"team-{time.monotonic_ns()}")
    with store.session() as session:
        ids = [new_id("ftjob") for _ in range(count)]
        for i, job_id in enumerate(ids):
            session.add(Job(id=job_id, created_seq=time.time_ns() + i, team_id=team.id, spec={}, files=[],
                            job_metadata={}, created_at=now(), **{"state": "queued", "attempt": 0, **values}))
        session.execute(update(Team).where(Team.id == team.id).values(max_running=count))
        session.commit()
    return ids


def together(*calls) -> None:
    """Run the calls at once in threads (a barrier lines them up), re-raising the first error."""
    barrier, errors = threading.Barrier(len(calls)), []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def test_two_replicas_start_each_queued_job_once(replicas):
    store, _settings, pair, started = replicas
    ids = add_jobs(store, 30)
    together(pair[0]._start_queued, pair[1]._start_queued)
    assert sorted(started) == sorted((job_id, 1) for job_id in ids)  # each job once, as attempt 1


def test_two_replicas_following_one_run_add_each_event_once(replicas):
    from sqlalchemy import select

    from tlscale.service.jobs import job_dir
    from tlscale.service.store import Job, JobEvent

    store, settings, pair, _ = replicas
    (job_id,) = add_jobs(store, 1, state="running", attempt=1, worker="test:x:1")
    run = job_dir(settings, job_id) / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step in range(1, 41):
        with open(run / "metrics.jsonl", "a") as rows:
            rows.write(json.dumps({"train/loss": 1.0 / step, "step": step}) + "\n")
            if step % 10 == 0:
                rows.write(json.dumps({"eval/accuracy": step / 40, "step": step}) + "\n")
                (run / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": f"step-{step}",
                                                                             "step": step}))
        if step % 4 == 0:
            jobs = []
            for _ in pair:  # each replica reads the row on its own
                with store.session() as session:
                    jobs.append(session.get(Job, job_id))
            together(*(lambda d=d, j=j: (d._collect_events(j), d._collect_checkpoints(j)) for d, j in zip(pair, jobs)))
    with store.session() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
    assert [e.data["step"] for e in events if e.kind == "log"] == list(range(1, 41))
    assert [e.data["step"] for e in events if e.kind == "evaluation"] == [10, 20, 30, 40]
    assert [e.data["step"] for e in events if e.kind == "checkpoint"] == [10, 20, 30, 40]
    assert [e.seq for e in events] == list(range(len(events)))


def test_a_claim_left_without_an_attempt_is_started_again_once(replicas):
    from tlscale.service.dispatcher import START_GRACE_S
    from tlscale.service.store import now

    store, _settings, pair, started = replicas
    (fresh,) = add_jobs(store, 1, state="running", attempt=1, worker=f"test:pending:{now():.0f}")
    (stale,) = add_jobs(store, 1, state="running", attempt=2, worker=f"test:pending:{now() - START_GRACE_S - 5:.0f}")
    together(pair[0]._follow_running, pair[1]._follow_running)
    assert started == [(stale, 2)]  # the stale claim, once, under its own attempt number; the fresh one waits
    together(pair[0]._follow_running, pair[1]._follow_running)
    assert started == [(stale, 2)] and fresh
