"""Signals to `tlscale train --nproc 2`: SIGTERM (to the CLI or its whole process group) reaches every worker,
which checkpoint and exit, and the CLI exits 0; SIGKILL of the CLI leaves no worker running. "No worker left"
is read off the run folder's lock: workers inherit it, so it is free only once the last of them has exited."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import tiny_spec, wait_for, write_spec
from tlscale.errors import RunStateError
from tlscale.run_folder import claim

pytestmark = pytest.mark.distributed


def start(path, *extra):
    return subprocess.Popen([sys.executable, "-m", "tlscale", "train", str(path), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def lock_is_free(run):
    try:
        claim(run, resume=True).release()
        return True
    except RunStateError:
        return False


def latest_step(run):
    pointer = run / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.exists() else None


@pytest.fixture
def spec_path(tmp_path, sst2_files):
    raw = tiny_spec(tmp_path / "run", *sst2_files, distributed={"backend": "ddp", "num_processes": 2})
    raw["training"].update(epochs=50, save_every_steps=5, log_every_steps=5)
    return write_spec(tmp_path / "spec.yaml", raw)


@pytest.mark.parametrize("target", ["cli", "group"])
def test_sigterm_checkpoints_every_worker_and_exits_0(tmp_path, spec_path, target):
    run = tmp_path / "run"
    process = start(spec_path)
    assert wait_for(lambda: latest_step(run) is not None), process.kill() or process.communicate()[0]
    os.kill(process.pid, signal.SIGTERM) if target == "cli" else os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 0, output
    assert "stopped after step" in output and "Traceback" not in output, output
    stopped = latest_step(run)
    assert f"stopped after step {stopped}" in output
    assert lock_is_free(run), "a worker still holds the run folder"
    assert not (run / "metrics.json").exists()


def test_sigkill_of_the_cli_stops_the_workers(tmp_path, spec_path):
    run = tmp_path / "run"
    process = start(spec_path)
    assert wait_for(lambda: latest_step(run) is not None), process.kill() or process.communicate()[0]
    first = latest_step(run)
    process.kill()
    process.communicate(timeout=30)
    assert wait_for(lambda: lock_is_free(run), timeout=120), "workers kept running after their launcher died"
    assert latest_step(run) >= first  # they checkpointed on their way out (SIGTERM from the kernel)
    resumed = subprocess.run([sys.executable, "-m", "tlscale", "train", str(spec_path), "--no-progress", "--resume",
                              "--stop-after-steps", str(latest_step(run) + 1)], capture_output=True, text=True)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
