"""The ladder's cells as jobs of a tlscale job API (`ladder.runner: service`).

The service queues them under the team's quotas, runs them on its workers (processes or a Ray cluster) and
retries infrastructure failures itself. The ladder uploads each data file once, follows the jobs, and brings
each finished cell's metrics.json, event log and model back into the cell's folder, so the table, the
pictures and the prediction timing come out as for cells run here. The cell's job ids are kept beside its
spec (job.json): an interrupted ladder, run again, follows the jobs it started instead of starting them again
(and an idempotency key covers a submission whose answer was lost)."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from tlscale.errors import ConfigError
from tlscale.ladder.cells import Cell
from tlscale.ladder.execute import USER_ERROR, Outcome, prepare

JOB_FILE = "job.json"
POLL_S = 2.0
QUEUE_FULL = 429  # the team's max_queued (or compute) quota: wait for a job to end, then submit more


def recipe_digest(cell: Cell) -> str:
    from tlscale.spec import JobSpec

    meaning = JobSpec.model_validate(cell.spec).model_dump(mode="json", exclude={"output_dir"})
    return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()


def _jobs_of(cell: Cell) -> list[str]:
    """The jobs started for this cell's present recipe, oldest first."""
    path = cell.folder / JOB_FILE
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    return record["jobs"] if record.get("recipe") == recipe_digest(cell) else []


def run_on_service(cells: list[Cell], retries: int, report, server: str | None, ladder_dir: Path) -> dict[str, Outcome]:
    from tlscale.service.client import ENDED, Client, ServiceError

    client = Client(server)
    waiting, following, attempts, outcomes = list(cells), {}, {}, {}
    for cell in cells:  # a ladder interrupted earlier: its jobs may still be queued, running or finished
        started = _jobs_of(cell)
        if started:
            try:
                status = client.job(started[-1])["status"]
            except ServiceError as exc:
                if exc.status != 404:
                    raise
                continue
            if status not in ("failed", "cancelled"):
                following[started[-1]] = cell
                waiting.remove(cell)
                attempts[cell.key] = 1
    while waiting or following:
        while waiting:
            cell = waiting[0]
            try:
                job = _submit(client, cell, ladder_dir)
            except ServiceError as exc:
                if exc.status == QUEUE_FULL and following:
                    break
                raise ConfigError([f"ladder cell {cell.key}: {m}" for m in exc.messages]) from None
            waiting.pop(0)
            following[job["id"]] = cell
            attempts[cell.key] = attempts.get(cell.key, 0) + 1
        time.sleep(POLL_S)
        for job_id, cell in list(following.items()):
            job = client.job(job_id)
            if job["status"] not in ENDED:
                continue
            del following[job_id]
            outcome = _bring_back(client, cell, job, attempts[cell.key])
            if outcome.returncode not in (0, USER_ERROR) and attempts[cell.key] <= retries:
                report(cell, outcome, retrying=True)
                waiting.insert(0, cell)
                continue
            outcomes[cell.key] = outcome
            report(cell, outcome, retrying=False)
    return outcomes


def _submit(client, cell: Cell, ladder_dir: Path) -> dict:
    prepare(cell)  # the cell's spec.yaml, as a local cell has it
    raw = client.with_uploads(cell.spec)  # (each file hashed and uploaded once per ladder)
    digest, started = recipe_digest(cell), _jobs_of(cell)
    key = hashlib.sha256(f"{ladder_dir.resolve()}|{cell.key}|{digest}|{len(started)}".encode()).hexdigest()
    job = client.create_job(raw, metadata={"ladder": ladder_dir.name, "cell": cell.key}, command=cell.command,
                            idempotency_key=f"tlscale-ladder-{key[:48]}")
    if job["id"] not in started:
        started.append(job["id"])
    from tlscale.files import write_json_atomic

    write_json_atomic(cell.folder / JOB_FILE, {"recipe": digest, "jobs": started})
    return job


def _bring_back(client, cell: Cell, job: dict, attempt: int) -> Outcome:
    """The ended job's event log into the cell's log.txt; a succeeded one's metrics.json (and model) into its
    run folder, replacing what an earlier recipe left there."""
    with (cell.folder / "log.txt").open("a") as log:
        log.write(f"--- job {job['id']} ({job['command']}), attempt {attempt} of this ladder\n")
        for event in client.events(job["id"])["data"]:
            log.write(f"{time.strftime('%H:%M:%S', time.localtime(event['created_at']))} {event['message']}\n")
    seconds = (job["finished_at"] or 0) - (job["started_at"] or job["finished_at"] or 0)
    if job["status"] != "succeeded":
        code = USER_ERROR if (job.get("error") or {}).get("kind") == "user_error" else 1
        return Outcome(code, seconds, None, attempt, job=job["id"])
    metrics = client.metrics(job["id"])["final"]
    staging = cell.folder / ".run-from-service"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if cell.command == "train":
        _unpack_model(client, job["id"], staging)
    metrics["output_dir"] = str(cell.run_dir)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(cell.run_dir, ignore_errors=True)  # (the ladder's own folder: an earlier recipe's run)
    staging.rename(cell.run_dir)
    return Outcome(0, seconds, (metrics.get("memory") or {}).get("peak_rss_mb"), attempt, job=job["id"])


def _unpack_model(client, job_id: str, target: Path) -> None:
    import tarfile

    from tlscale.service.client import ServiceError

    archive = target / "model.tar.gz"
    try:
        client.download_model(job_id, archive)
    except ServiceError as exc:
        if exc.status == 409:  # a run that saved no model
            return
        raise
    with tarfile.open(archive) as bundle:
        bundle.extractall(target, filter="data")  # nothing outside target, no links out of it
    archive.unlink()
