"""The job API on a real server over loopback, with a real SQLite store: tokens, tenancy, uploads, job
creation (idempotent, concurrent, under quotas), malformed requests; and jobs the dispatcher runs to the end
with the local runner on real SST-2 rows and the tiny BERT."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import pytest

from tests.conftest import DATA
from tests.service.conftest import httpx, wait_for_state


def sst2_tsv(first: int, count: int) -> bytes:
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()
    return ("\n".join(lines[:1] + lines[1 + first:1 + first + count]) + "\n").encode()


def upload(client, name: str, content: bytes) -> dict:
    return client.post("/v1/files", files={"file": (name, content, "application/octet-stream")})


def tiny_job_spec(train_id: str, eval_id: str, **training) -> dict:
    return {"task": "text_classification", "seed": 7,
            "model": {"name_or_path": "tiny:bert", "max_length": 48},
            "data": {"train_file": train_id, "eval_file": eval_id, "text_column": "sentence", "label_column": "label",
                     "labels": ["negative", "positive"]},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "log_every_steps": 5, "eval_every_steps": 10,
                         **training}}


@pytest.fixture(scope="module")
def team_a(api):
    return api.team("team-a")


@pytest.fixture(scope="module")
def team_b(api):
    return api.team("team-b")


@pytest.fixture(scope="module")
def a_files(team_a):
    train = upload(team_a, "train.tsv", sst2_tsv(0, 160))
    dev = upload(team_a, "dev.tsv", sst2_tsv(1000, 64))
    assert train.status_code == dev.status_code == 201, train.text + dev.text
    return train.json()["id"], dev.json()["id"]


# --- authentication and tenancy ------------------------------------------------------------------------

def test_requests_without_a_valid_token_get_401(api, team_a):
    from tlscale.service.teams import create_token, revoke_token

    revoked = create_token(api.store, "team-a")
    revoke_token(api.store, revoked)
    expired = create_token(api.store, "team-a", expires_in_days=1e-9)
    time.sleep(0.01)
    for headers in ({}, {"Authorization": "Bearer tls_nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {revoked}"}, {"Authorization": f"Bearer {expired}"}):
        for method, path in (("GET", "/v1/fine_tuning/jobs"), ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/files"),
                             ("GET", "/v1/fine_tuning/jobs/ftjob-x/events"), ("GET", "/v1/usage")):
            response = httpx.request(method, api.url + path, headers=headers, json={})
            assert response.status_code == 401, (headers, path, response.text)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
    assert team_a.get("/v1/fine_tuning/jobs").status_code == 200  # the team's first token still works


def test_another_teams_jobs_and_files_do_not_exist(api, team_a, team_b, a_files):
    job = team_a.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*a_files)})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    for path in (f"/v1/fine_tuning/jobs/{job_id}", f"/v1/fine_tuning/jobs/{job_id}/events",
                 f"/v1/fine_tuning/jobs/{job_id}/metrics", f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
                 f"/v1/fine_tuning/jobs/{job_id}/artifacts/model.tar.gz", f"/v1/files/{a_files[0]}"):
        response = team_b.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["type"] == "not_found_error"
    assert team_b.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 404
    assert team_b.get("/v1/fine_tuning/jobs", params={"after": job_id}).status_code == 404
    assert all(j["id"] != job_id for j in team_b.get("/v1/fine_tuning/jobs").json()["data"])
    assert team_b.get("/v1/files").json()["data"] == []
    # team B cannot use team A's file in a spec either
    stolen = team_b.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*a_files)})
    assert stolen.status_code == 422 and f"no file '{a_files[0]}'" in stolen.json()["error"]["message"]
    assert team_a.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "validating_files"


# --- uploads -----------------------------------------------------------------------------------------

def test_uploads_are_checked_and_stored_under_their_hash(api, team_a):
    good = upload(team_a, "../../etc/reviews.tsv", sst2_tsv(0, 20))
    assert good.status_code == 201, good.text
    body = good.json()
    assert body["filename"] == "reviews.tsv" and body["validation"] == {"kind": "table", "rows": 20,
                                                                        "columns": ["sentence", "label"]}
    stored = list((api.data_dir / "files").rglob(f"{body['sha256']}.tsv"))
    assert len(stored) == 1 and stored[0].read_bytes() == sst2_tsv(0, 20)
    again = upload(team_a, "copy.tsv", sst2_tsv(0, 20))  # same bytes: one copy on disk
    assert again.json()["sha256"] == body["sha256"] and len(list((api.data_dir / "files").rglob("*.tsv"))) == \
        len({p.name for p in (api.data_dir / "files").rglob("*.tsv")})
    bad = upload(team_a, "bad.jsonl", b'{"sentence": "fine", "label": 1}\n{"sentence": "oops", "label": 0\n')
    assert bad.status_code == 422 and "bad.jsonl:2" in bad.json()["error"]["message"], bad.text
    assert not list((api.data_dir / "files").rglob(".upload-*"))  # nothing half-written left behind
    assert upload(team_a, "notes.exe", b"x").status_code == 422
    assert upload(team_a, "empty.csv", b"").status_code == 422
    found = team_a.get("/v1/files", params={"sha256": body["sha256"]}).json()["data"]
    assert {f["id"] for f in found} == {body["id"], again.json()["id"]}


# --- creating jobs --------------------------------------------------------------------------------------

def test_a_retried_create_with_the_same_idempotency_key_makes_one_job(api, a_files):
    client = api.team("retries")
    files = [upload(client, n, sst2_tsv(0, 40)).json()["id"] for n in ("t.tsv", "d.tsv")]
    ids, threads = [], []

    def create():
        response = client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files)},
                               headers={"Idempotency-Key": "nightly-2026-12-02"})
        assert response.status_code in (200, 201), response.text
        ids.append(response.json()["id"])

    for _ in range(20):
        threads.append(threading.Thread(target=create))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert len(ids) == 20 and len(set(ids)) == 1
    assert len(client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]) == 1


def test_concurrent_clients_create_exactly_the_jobs_they_asked_for(api):
    client = api.team("busy", max_queued=10_000)
    files = [upload(client, n, sst2_tsv(0, 40)).json()["id"] for n in ("t.tsv", "d.tsv")]
    created, failures = [], []

    def worker(n):
        with httpx.Client(base_url=api.url, headers=client.headers, timeout=60) as own:
            for i in range(10):
                response = own.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files),
                                                                   "metadata": {"client": str(n), "i": str(i)}})
                (created if response.status_code == 201 else failures).append(response)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len({r.json()["id"] for r in created}) == 200
    seen, after = [], None
    while True:  # every job, once, through the pages
        page = client.get("/v1/fine_tuning/jobs", params={"limit": 37, **({"after": after} if after else {})}).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert len(seen) == len(set(seen)) == 200
    mine = client.get("/v1/fine_tuning/jobs", params={"metadata.client": "3", "limit": 100}).json()["data"]
    assert sorted(j["metadata"]["i"] for j in mine) == [str(i) for i in range(10)]


def test_a_quota_breach_is_a_429_naming_the_quota(api):
    client = api.team("small", max_queued=1)
    files = [upload(client, n, sst2_tsv(0, 40)).json()["id"] for n in ("t.tsv", "d.tsv")]
    assert client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files)}).status_code == 201
    refused = client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files)})
    assert refused.status_code == 429 and "quota max_queued" in refused.json()["error"]["message"]
    assert refused.json()["error"]["type"] == "quota_exceeded_error"


def test_a_cancelled_waiting_job_never_starts(api, team_a, a_files):
    from tlscale.service.dispatcher import Dispatcher
    from tlscale.service.jobs import Settings

    job_id = team_a.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*a_files)}).json()["id"]
    cancelled = team_a.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    Dispatcher(api.store, Settings(data_dir=api.data_dir), capacity=4)._start_queued()
    job = team_a.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["started_at"] is None and job["attempt"] == 0
    kinds = [e["message"] for e in team_a.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]
    assert kinds[-1] == "cancelled before it started"


def spec_with(**changes):
    """A request body whose spec is the team's valid tiny spec with one change (made in the test)."""
    return {"json": {"spec": "EDIT"}, "edit": changes}


def edited(spec: dict, changes: dict) -> dict:
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if key:
            spec.setdefault(section, {})[key] = value
        else:
            spec[section] = value
    return spec


JSON = {"content-type": "application/json"}
MALFORMED = [
    ("POST", "/v1/fine_tuning/jobs", {"content": b"{not json", "headers": JSON}, 400, "not valid JSON"),
    ("POST", "/v1/fine_tuning/jobs", {"content": b"[1, 2]", "headers": JSON}, 422, "expected a JSON object"),
    ("POST", "/v1/fine_tuning/jobs", {"content": b"\xff\xfe", "headers": JSON}, 400, "not valid JSON"),
    ("POST", "/v1/fine_tuning/jobs", {"content": b"spec: {}", "headers": {"content-type": "text/yaml"}}, 415,
     "Content-Type: application/json"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {}}, 422, "spec is required"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": {}, "colour": "red"}}, 422, "unknown field(s) ['colour']"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": {}, "command": "predict"}}, 422,
     "command: expected one of train, fewshot, found 'predict'"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": "a: [unclosed"}}, 422, "not valid YAML"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": [1]}}, 422, "spec: expected a mapping"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": {"task": "text_classificaton"}}}, 422,
     "Did you mean 'text_classification'"),
    ("POST", "/v1/fine_tuning/jobs", {"content": b'{"spec": "' + b"x" * (2 << 20) + b'"}', "headers": JSON}, 413,
     "larger than"),
    ("POST", "/v1/fine_tuning/jobs", {**spec_with(), "priority": 1000}, 422, "priority: expected"),
    ("POST", "/v1/fine_tuning/jobs", {**spec_with(), "priority": True}, 422, "priority: expected"),
    ("POST", "/v1/fine_tuning/jobs", {**spec_with(), "metadata": {"k": 1}}, 422, "metadata: expected"),
    ("POST", "/v1/fine_tuning/jobs", {**spec_with(), "metadata": ["x"]}, 422, "metadata: expected"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(**{"data.train_file": "file-000000000000000000000000"}), 422,
     "no file 'file-000000000000000000000000'"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(**{"data.train_file": "/etc/passwd"}), 422, "expected a file id"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(**{"data.eval_file": "../../data/dev.tsv"}), 422, "expected a file id"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(**{"data.train_file": "file-../../etc"}), 422, "expected a file id"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"spec": {  # each multi_task task's files are checked as data's are
        "task": "multi_task", "model": {"name_or_path": "tiny:bert"}, "multi_task": {"tasks": [
            {"name": "a", "task": "text_classification", "data": {"train_file": "/etc/passwd"}},
            {"name": "b", "task": "text_classification", "data": {"train_file": "/etc/hosts"}}]}}}}, 422,
     "multi_task.tasks.1.data.train_file: expected a file id"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(runner="ray"), 422, "runner: this server runs jobs"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(**{"training.epochs": 0}), 422, "training.epochs"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(strategy={"name": "lorra"}), 422, "Did you mean 'lora'"),
    ("POST", "/v1/fine_tuning/jobs", spec_with(qa={"doc_stride": 8}), 422, "qa section only applies"),
    ("GET", "/v1/fine_tuning/jobs?limit=0", {}, 422, "limit"),
    ("GET", "/v1/fine_tuning/jobs?limit=100000", {}, 422, "limit"),
    ("GET", "/v1/fine_tuning/jobs?limit=abc", {}, 422, "limit"),
    ("GET", "/v1/fine_tuning/jobs?after=ftjob-nope", {}, 404, "no job"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-nope", {}, 404, "no job"),
    ("GET", "/v1/fine_tuning/jobs/..%2F..%2Fetc/events", {}, 404, ""),
    ("GET", "/v1/fine_tuning/jobs/ftjob-nope/events?after=abc", {}, 422, "after"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-nope/cancel", {}, 404, "no job"),
    ("GET", "/v1/files/file-nope", {}, 404, "no file"),
    ("GET", "/v1/files?sha256=../x", {}, 422, "sha256"),
    ("POST", "/v1/files", {"content": b"x", "headers": {"content-type": "text/plain"}}, 422, "file"),
    ("POST", "/v1/files", {"files": {"other": ("a.csv", b"a,b\n1,2\n")}}, 422, "file"),
    ("POST", "/v1/files", {"files": {"file": ("a.csv", b"a,a\n1,2\n")}}, 422, "a.csv"),
    ("POST", "/v1/files", {"files": {"file": ("a.jsonl", b"\xff\xfe\x00")}}, 422, "a.jsonl"),
    ("POST", "/v1/files", {"files": {"file": ("a.json", b'{"data": 3}')}}, 422, "a.json"),
    ("POST", "/v1/files", {"files": {"file": ("noext", b"a,b\n")}}, 422, "expected a name ending in"),
    ("POST", "/v1/files", {"files": {"file": ("a.parquet", b"not parquet")}}, 422, "a.parquet"),
    ("DELETE", "/v1/fine_tuning/jobs", {}, 405, ""),
    ("GET", "/v1/nothing-here", {}, 404, ""),
    ("PUT", "/v1/files", {}, 405, ""),
]


@pytest.mark.parametrize("method,path,request_args,status,fragment", MALFORMED,
                         ids=[f"{i}-{m}-{s}" for i, (m, _, _, s, _) in enumerate(MALFORMED)])
def test_malformed_requests_get_a_clear_4xx(api, team_a, a_files, method, path, request_args, status, fragment):
    request_args = dict(request_args)
    if "edit" in request_args:
        body = {k: v for k, v in request_args.items() if k in ("priority", "metadata")}
        body["spec"] = edited(tiny_job_spec(*a_files), request_args.pop("edit"))
        request_args = {"json": body}
    response = team_a.request(method, path, **request_args)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and response.json().get("error", {}).get("message") is not None
    if fragment:
        assert fragment in json.dumps(response.json()), response.text


# --- running jobs -----------------------------------------------------------------------------------------

def test_a_job_runs_to_the_end_with_events_metrics_and_its_model(running_api):
    client = running_api.team("runs")
    files = [upload(client, name, sst2_tsv(first, count)).json()["id"]
             for name, first, count in (("train.tsv", 0, 160), ("dev.tsv", 1000, 64))]
    job = client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files), "metadata": {"run": "first"}})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    done = wait_for_state(client, job_id, ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done
    assert done["started_at"] and done["finished_at"] and done["attempt"] == 1 and done["queue_position"] is None
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    states = [e["data"]["state"] for e in events if e["type"] == "state" and "state" in e["data"]]
    assert states == ["validating_files", "queued", "running", "succeeded"], events
    evaluations = [e for e in events if e["type"] == "evaluation"]
    assert evaluations and "accuracy" in evaluations[0]["message"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    later = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": events[2]["seq"]}).json()["data"]
    assert [e["seq"] for e in later] == [e["seq"] for e in events[3:]]
    metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()
    assert metrics["final"]["train_examples"] == 160 and metrics["final"]["eval_examples"] == 64
    assert any("train/loss" in row for row in metrics["rows"]) and "output_dir" not in metrics["final"]
    archive = client.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts/model.tar.gz")
    assert archive.status_code == 200
    names = tarfile.open(fileobj=io.BytesIO(archive.content)).getnames()
    assert "model/config.json" in names and "model/model.safetensors" in names
    usage = client.get("/v1/usage").json()  # the finished job's running time, counted against the month's quota
    hours = (done["finished_at"] - done["started_at"]) / 3600
    assert usage["compute_hours"] == pytest.approx(hours, abs=1e-3) and usage["compute_hours"] > 0, usage
    assert usage["running"] == usage["waiting"] == 0 and usage["quotas"]["max_compute_hours"] == 1000.0

    # a spec whose data does not fit fails at validation, as the user's error, with the upload's name and line
    bad = tiny_job_spec(*files)
    bad["data"]["label_column"] = "sentiment"
    failed = wait_for_state(client, client.post("/v1/fine_tuning/jobs", json={"spec": bad}).json()["id"],
                            ("succeeded", "failed", "cancelled"))
    assert failed["status"] == "failed" and failed["error"]["kind"] == "user_error", failed
    assert "sentiment" in failed["error"]["message"] and "train.tsv" in failed["error"]["message"]
    assert str(running_api.data_dir) not in failed["error"]["message"]  # no server paths in what a client sees


def test_the_committed_openapi_document_is_the_apis():
    from tests.conftest import ROOT
    from tlscale.service.server import openapi_document

    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), \
        "regenerate it: tlscale serve openapi -o docs/openapi.json"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_store_schema_is_the_migrations(tmp_path, request, backend):
    """Alembic's revisions build exactly the tables the models declare (nothing to autogenerate), on both."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tlscale.service.store import Base, Store

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'fresh.db'}"
    store = Store(url)
    Store(url).close()  # opening a migrated store again is a no-op
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def _attempt_children(pid: int) -> list[int]:
    from pathlib import Path

    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_running_with_rows(client, job_id: str, data_dir, timeout: float = 180) -> dict:
    from tlscale.service.jobs import Settings, job_dir

    deadline = time.monotonic() + timeout
    rows = job_dir(Settings(data_dir=data_dir), job_id) / "run" / "metrics.jsonl"
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] == "running" and rows.is_file() and rows.read_text().count("train/loss") >= 2:
            return job
        assert job["status"] in ("validating_files", "queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never trained: {job}")


def _long_job(client, **training) -> str:
    files = [upload(client, name, sst2_tsv(first, count)).json()["id"]
             for name, first, count in (("train.tsv", 0, 160), ("dev.tsv", 1000, 64))]
    spec = tiny_job_spec(*files, **{"epochs": 8, "log_every_steps": 2, "save_every_steps": 10, **training})
    response = client.post("/v1/fine_tuning/jobs", json={"spec": spec})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_killed_training_process_is_an_infrastructure_failure_retried_from_its_checkpoint(running_api):
    import os
    import signal

    from sqlalchemy import select

    from tlscale.service.store import Job

    client = running_api.team("flaky")
    job_id = _long_job(client)
    _wait_running_with_rows(client, job_id, running_api.data_dir)
    deadline = time.monotonic() + 120  # until the first checkpoint exists, so the retry resumes from it
    while not list((running_api.data_dir / "jobs" / job_id / "run" / "checkpoints").glob("step-*")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with running_api.store.session() as session:
        attempt_pid = int(session.scalar(select(Job).where(Job.id == job_id)).worker.split(":")[1])
    for pid in _attempt_children(attempt_pid):
        os.kill(pid, signal.SIGKILL)  # the node's OOM killer, say
    done = wait_for_state(client, job_id, ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    restarts = [e for e in events if e["type"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["data"]["exit_code"] == -signal.SIGKILL
    assert any(e["message"].startswith("running: attempt 2, resuming") for e in events)
    checkpoints = [e["data"]["step"] for e in events if e["type"] == "checkpoint"]
    assert checkpoints and checkpoints == sorted(set(checkpoints)) and checkpoints[0] >= 10, checkpoints
    metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["final"]
    assert metrics["resumed_from_step"] is not None and metrics["resumed_from_step"] >= 10


def test_a_running_job_cancelled_stops_at_a_checkpoint(running_api):
    client = running_api.team("impatient")
    job_id = _long_job(client, epochs=30)
    _wait_running_with_rows(client, job_id, running_api.data_dir)
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    done = wait_for_state(client, job_id, ("succeeded", "failed", "cancelled"), timeout=120)
    assert done["status"] == "cancelled" and done["error"] is None, done
    assert list((running_api.data_dir / "jobs" / job_id / "run" / "checkpoints").glob("step-*"))


def test_submit_and_jobs_commands_against_the_server(api, tmp_path, monkeypatch):
    """`tlscale submit SPEC --server` uploads the spec's local files once (by content hash) and creates the
    job; `tlscale jobs list|status|cancel --server` read and change it; the token comes from TLSCALE_TOKEN."""
    from tests.conftest import write_spec
    from tests.unit.cli_checks import invoke
    from tlscale.service.teams import create_team

    _, token = create_team(api.store, "cli-users")
    monkeypatch.setenv("TLSCALE_TOKEN", token)
    (tmp_path / "train.tsv").write_bytes(sst2_tsv(0, 80))
    (tmp_path / "dev.tsv").write_bytes(sst2_tsv(1000, 32))
    raw = tiny_job_spec(str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"))
    spec = write_spec(tmp_path / "spec.yaml", {**raw, "output_dir": str(tmp_path / "local-run")})
    code, output = invoke("submit", spec, "--server", api.url)
    assert code == 0, output
    first = output.split()[1]
    code, output = invoke("submit", spec, "training.epochs=2", "--server", api.url)
    assert code == 0, output
    second = output.split()[1]
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"})
    assert len(client.get("/v1/files").json()["data"]) == 2  # uploaded once, reused by the second submit
    assert client.get(f"/v1/fine_tuning/jobs/{second}").json()["status"] == "validating_files"
    code, output = invoke("jobs", "list", "--server", api.url)
    assert code == 0 and first in output and second in output, output
    code, output = invoke("jobs", "cancel", first, "--server", api.url)
    assert code == 0 and f"{first}: cancelled" in output, output
    code, output = invoke("jobs", "status", first, "--server", api.url)
    assert code == 0 and "cancelled" in output, output
    code, output = invoke("submit", spec, "training.epochs=0", "--server", api.url)  # refused locally, exit 2
    assert code == 2 and "training.epochs" in output
    monkeypatch.setenv("TLSCALE_TOKEN", "tls_wrong")
    code, output = invoke("jobs", "list", "--server", api.url)
    assert code == 2 and "server (401)" in output, output
