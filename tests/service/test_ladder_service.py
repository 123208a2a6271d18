"""`tlscale ladder` with `runner: service`: every cell a job of a real job API (its dispatcher running them as
local processes), few-shot cells as `fewshot` jobs; the ladder killed while its jobs run, then run again,
follows the jobs it had started (no second copy of any) and writes the same table as a local ladder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT, run_cli, wait_for, write_spec
from tests.integration.test_ladder import ladder_spec
from tests.service.conftest import httpx, start_server


def test_a_ladder_through_the_service_survives_its_own_kill_and_starts_no_job_twice(tmp_path, small_sst2,
                                                                                    monkeypatch):
    from tlscale.service.teams import create_team

    server = start_server(tmp_path / "service", dispatch=True, capacity=2)
    try:
        _, token = create_team(server.store, "ladders")
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        raw = ladder_spec(tmp_path, *small_sst2)
        raw["ladder"].update(budgets=[4], runner="service", server=server.url)
        spec = write_spec(tmp_path / "ladder.yaml", raw)
        monkeypatch.setenv("TLSCALE_TOKEN", token)
        folder = tmp_path / "ladder"

        def jobs() -> list[dict]:
            return api.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]

        first = subprocess.Popen([sys.executable, "-m", "tlscale", "ladder", str(spec)], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
        assert wait_for(lambda: any(j["status"] == "running" for j in jobs()), timeout=240), first.stderr
        first.send_signal(signal.SIGKILL)  # the ladder dies; its jobs go on on the server
        first.communicate(timeout=60)
        started = {j["id"] for j in jobs()}
        assert started and all((folder / "cells" / m / "k4" / f"seed{s}" / "job.json").is_file()
                               for m, s in (j["metadata"]["cell"].split(" k=4 seed ") for j in jobs()))

        again = run_cli("ladder", str(spec))
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "4 cells: 0 finished earlier, 4 to run (as jobs of the service)" in again.stderr
        ended = jobs()
        assert len(ended) == 4 and started <= {j["id"] for j in ended}  # the first run's jobs followed, not redone
        assert all(j["status"] == "succeeded" for j in ended)
        assert sorted((j["metadata"]["cell"], j["command"]) for j in ended) == [
            ("full k=4 seed 0", "train"), ("full k=4 seed 1", "train"),
            ("linear_probe k=4 seed 0", "fewshot"), ("linear_probe k=4 seed 1", "fewshot")]

        result = json.loads((folder / "ladder.json").read_text())
        rows = {(r["method"], r["budget"]): r for r in result["rows"]}
        assert list(rows) == [("linear_probe", 4), ("full", 4)]
        assert all(r["seeds"] == 2 and 0.0 <= r["mean"] <= 1.0 for r in rows.values())
        assert rows[("full", 4)]["predict_ms_per_1000"] > 0  # timed here, on the model brought back
        assert rows[("full", 4)]["peak_rss_mb"] > 50  # the job's own peak, from its metrics.json
        assert result["eval"]["same"] is True and result["eval"]["examples"] == 64
        cell = folder / "cells" / "full" / "k4" / "seed0"
        metrics = json.loads((cell / "run" / "metrics.json").read_text())
        assert metrics["train_examples"] == 8 and metrics["steps"] >= 6 and metrics["output_dir"] == str(cell / "run")
        assert (cell / "run" / "model" / "config.json").is_file()
        assert "succeeded" in (cell / "log.txt").read_text()

        once_more = run_cli("ladder", str(spec))
        assert once_more.returncode == 0 and "4 cells: 4 finished earlier, 0 to run" in once_more.stderr
        assert len(jobs()) == 4
    finally:
        server.stop()
