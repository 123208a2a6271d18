"""A server killed with SIGKILL and started again loses no job: waiting jobs stay queued, the running
attempt (in its own session) goes on, the new server re-attaches to it and never starts a second copy."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.service.conftest import free_port, httpx, wait_for_state
from tests.service.test_api import sst2_tsv, tiny_job_spec, upload


def start(data_dir, port: int, *options: str) -> subprocess.Popen:
    """`tlscale serve` as its own process (so a test can SIGKILL it), once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "tlscale", "serve", "--data-dir", str(data_dir), "--port",
                               str(port), *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(server.stdout.read())


def test_sigkill_of_the_server_loses_no_job_and_starts_no_second_copy(tmp_path):
    from tlscale.service.server import open_store
    from tlscale.service.teams import create_team

    data_dir = tmp_path / "service"
    _, token = create_team(open_store(data_dir, None), "survivors")
    port = free_port()
    server = start(data_dir, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=60)
    files = [upload(client, name, sst2_tsv(first, count)).json()["id"]
             for name, first, count in (("train.tsv", 0, 160), ("dev.tsv", 1000, 64))]
    running = client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files, epochs=4)}).json()["id"]
    waiting = [client.post("/v1/fine_tuning/jobs", json={"spec": tiny_job_spec(*files, max_steps=4)}).json()["id"]
               for _ in range(2)]
    rows = data_dir / "jobs" / running / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (rows.is_file() and rows.read_text().count("train/loss") >= 2):
        assert time.monotonic() < deadline, client.get(f"/v1/fine_tuning/jobs/{running}").json()
        time.sleep(0.2)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    assert len(list((data_dir / "jobs" / running).glob("attempt-*.log"))) == 1

    server = start(data_dir, port)
    try:
        done = wait_for_state(client, running, ("succeeded", "failed", "cancelled"), timeout=300)
        assert done["status"] == "succeeded" and done["attempt"] == 1, done  # re-attached, not restarted
        for job_id in waiting:
            assert wait_for_state(client, job_id, ("succeeded", "failed", "cancelled"),
                                  timeout=300)["status"] == "succeeded"
        listed = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        assert sorted(j["id"] for j in listed) == sorted([running, *waiting])
        assert len(list((data_dir / "jobs" / running).glob("attempt-*.log"))) == 1  # one attempt ever started
        events = client.get(f"/v1/fine_tuning/jobs/{running}/events", params={"limit": 1000}).json()["data"]
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert sum(e["message"].startswith("running: attempt") for e in events) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
