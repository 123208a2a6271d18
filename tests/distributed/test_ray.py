"""Ray: a two-node cluster on this machine (two `ray start` processes on 127.0.0.2, one CPU each).

Runs with runner: ray place one worker per node and match a local 2-process run; a worker killed after a
checkpoint is restarted by Ray and the run ends as an uninterrupted one would; jobs submitted with
`tlscale submit` can be listed, inspected, followed and stopped; a job whose workers keep failing ends
FAILED with the worker's error in `tlscale jobs status`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, tiny_spec, write_spec

pytest.importorskip("ray")
pytestmark = pytest.mark.distributed

HOST = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the machine's outward address; 127.0.0.2 stays on loopback
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node, token auth on (Ray's default), stopped afterwards whatever happens."""
    ray = Path(sys.executable).with_name("ray")
    port, dashboard = free_port(), free_port()
    temps = [Path(tempfile.mkdtemp(prefix="/tmp/tlray")) for _ in range(2)]  # one per node (see PLATFORM-NOTES)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RAY_DEDUP_LOGS": "0"}
    common = ["--node-ip-address", HOST, "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([str(ray), "start", "--head", "--port", str(port), "--temp-dir", str(temps[0]),
                        "--dashboard-host", HOST, "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                        *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([str(ray), "start", "--address", f"{HOST}:{port}", "--temp-dir", str(temps[1]), *common],
                       env=env, check=True, capture_output=True, timeout=120)
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        os.environ.update({k: env[k] for k in saved})
        yield {"address": f"{HOST}:{port}", "jobs": f"http://{HOST}:{dashboard}"}
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=120)
        for key, value in locals().get("saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def rows(sst2_files):
    return sst2_files


def spec_for(tmp_path, rows, name, distributed, ray_address=None, steps=STEPS, **resources) -> Path:
    raw = tiny_spec(tmp_path / name, *rows, model={"dropout": 0.0, "classifier_dropout": 0.0},
                    training={"epochs": 1, "max_steps": steps, "lr": 1e-4, "log_every_steps": 1,
                              "save_every_steps": 3}, distributed=distributed)
    if ray_address is not None:
        raw["runner"] = "ray"
        raw["resources"] = {"num_workers": 2, "placement_strategy": "SPREAD", "address": ray_address, **resources}
    else:
        raw["distributed"]["num_processes"] = 2
    return write_spec(tmp_path / f"{name}.yaml", raw)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def cli_ok(*args, timeout=600):
    result = run_cli(*map(str, args), timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.mark.parametrize("backend", ["zero2"])  # DDP on Ray is what the restart and preemption tests run
def test_two_node_ray_run_matches_two_local_processes(tmp_path, cluster, rows, backend):
    distributed = {"backend": "ddp"} if backend == "ddp" else {"backend": "deepspeed", "zero_stage": 2}
    cli_ok("train", spec_for(tmp_path, rows, "ray", distributed, cluster["address"]), "--no-progress")
    cli_ok("train", spec_for(tmp_path, rows, "local", distributed), "--no-progress")
    ray_metrics = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    local_metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    workers = ray_metrics["ray"]["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert len({w["node_id"] for w in workers}) == 2  # one worker on each node
    assert ray_metrics["runner"] == "ray" and ray_metrics["saved_model_verified"] is True
    assert losses(tmp_path / "ray") == pytest.approx(losses(tmp_path / "local"), abs=1e-5)
    assert ray_metrics["eval"]["loss"] == pytest.approx(local_metrics["eval"]["loss"], abs=1e-5)
    assert ray_metrics["eval"]["accuracy"] == local_metrics["eval"]["accuracy"]
    reported = [c for c in (tmp_path / "ray" / "ray").glob("*/checkpoint_*") if c.is_dir()]
    assert reported and all((c / "trainer_state.json").is_file() for c in reported)  # checkpoints went to Ray


HOOKS = {
    # rank 1 kills itself (SIGKILL) at step 5, after the step-3 checkpoint went to Ray; first attempt only
    "kill": """
import os, signal
import tlscale.runners.ray_runner as ray_runner
original = ray_runner.RayReporter.log
def log_or_die(self, metrics, step):
    import ray.train, yaml
    context = ray.train.get_context()
    marker = os.path.join(yaml.safe_load(os.environ["TLSCALE_JOB_SPEC"])["output_dir"], ".killed-once")
    if step == 5 and context.get_world_rank() == 1 and not os.path.exists(marker):
        open(marker, "w").write("rank 1 killed at step 5")
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, metrics, step)
ray_runner.RayReporter.log = log_or_die
""",
    # every attempt of every worker fails
    "fail": """
import tlscale.training.loop as loop
def broken(*args, **kwargs):
    raise RuntimeError("injected worker failure: disk on fire")
loop.forward_backward = broken
""",
}


def hook_dir(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / f"hook-{name}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOOKS[name])
    return folder


def submit_and_wait(cluster, spec: Path, working_dir: Path, timeout_s: float = 400) -> tuple[str, str]:
    result = cli_ok("submit", spec, "--address", cluster["jobs"], "--working-dir", working_dir)
    job_id = result.stdout.split()[1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run_cli("jobs", "status", job_id, "--address", cluster["jobs"])
        state = status.stdout.split(":", 1)[1].split()[0] if ":" in status.stdout else ""
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job_id, status.stdout
        time.sleep(5)  # each look is a CLI process (about 1.3 s of CPU): more often would slow the job itself
    raise AssertionError(f"job {job_id} did not end in {timeout_s} s")


def test_ladder_cells_run_as_ray_tasks_spread_over_the_nodes(tmp_path, cluster, rows):
    """runner ray: the pending cells go to the cluster at once, one CPU each, spread over the nodes (before the
    tests below kill workers and drain a node); students (teacher:) go as a second wave, once their teachers ran."""
    raw = tiny_spec(tmp_path / "ladder", *rows, training={"epochs": 1, "batch_size": 8, "lr": 1e-3})
    raw["ladder"] = {"methods": ["full", {"name": "full", "label": "student", "teacher": "full"}], "budgets": [4],
                     "seeds": [0, 1, 2, 3], "min_steps": 4, "runner": "ray", "address": cluster["address"]}
    result = cli_ok("ladder", write_spec(tmp_path / "ladder.yaml", raw), timeout=600)
    assert "8 cells: 0 finished earlier, 8 to run (as Ray tasks)" in result.stderr
    outcomes = json.loads((tmp_path / "ladder" / "outcomes.json").read_text())
    assert sorted(outcomes) == [f"{m} k=4 seed {s}" for m in ("full", "student") for s in range(4)]
    assert all(o["returncode"] == 0 for o in outcomes.values())
    assert len({o["node"] for o in outcomes.values()}) == 2  # both nodes took cells
    ladder = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert ladder["eval"]["same"] is True and [r["seeds"] for r in ladder["rows"]] == [4, 4]
    cells = tmp_path / "ladder" / "cells"
    for seed in range(4):
        teacher, student = (cells / m / "k4" / f"seed{seed}" / "run" for m in ("full", "student"))
        lineage = json.loads((student / "metrics.json").read_text())["data"]["distill"]["teachers"][0]
        assert lineage["teacher"] == str(teacher)
        assert (student / "spec.yaml").stat().st_mtime > (teacher / "metrics.json").stat().st_mtime


def test_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tmp_path, cluster, rows):
    distributed = {"backend": "ddp"}
    spec = spec_for(tmp_path, rows, "killed", distributed, cluster["address"], max_failures=1)
    job_id, status = submit_and_wait(cluster, spec, hook_dir(tmp_path, "kill"))
    assert "SUCCEEDED" in status, status + run_cli("jobs", "logs", job_id, "--address", cluster["jobs"]).stdout[-4000:]
    assert (tmp_path / "killed" / ".killed-once").is_file()  # the kill did happen
    # the uninterrupted reference: the same 2-rank DDP run on local processes (a Ray run matches one: the test above)
    cli_ok("train", spec_for(tmp_path, rows, "straight", distributed), "--no-progress")
    killed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert killed["resumed_from_step"] == 3 and straight["resumed_from_step"] is None
    assert killed["steps"] == straight["steps"] == STEPS
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "straight"), abs=1e-5)
    assert killed["eval"]["loss"] == pytest.approx(straight["eval"]["loss"], abs=1e-5)
    assert killed["fixed_batch_loss"] == pytest.approx(straight["fixed_batch_loss"], abs=1e-5)
    logs = cli_ok("jobs", "logs", job_id, "--address", cluster["jobs"]).stdout
    assert "eval accuracy" in logs


def test_job_failing_past_max_failures_ends_failed_with_the_error(tmp_path, cluster, rows):
    # max_failures 0: the first failure is past it (Ray's own restarts are the killed-worker test's)
    spec = spec_for(tmp_path, rows, "failing", {"backend": "ddp"}, cluster["address"], max_failures=0)
    job_id, status = submit_and_wait(cluster, spec, hook_dir(tmp_path, "fail"))
    assert "FAILED" in status
    assert "injected worker failure: disk on fire" in status  # the worker's error, in `tlscale jobs status`
    listed = cli_ok("jobs", "list", "--address", cluster["jobs"]).stdout
    assert job_id[:20] in listed


def test_jobs_follow_and_stop(tmp_path, cluster, rows):
    spec = spec_for(tmp_path, rows, "stopped", {"backend": "ddp"}, cluster["address"], steps=200)
    job_id = cli_ok("submit", spec, "--address", cluster["jobs"]).stdout.split()[1]
    follower = subprocess.Popen([sys.executable, "-m", "tlscale", "jobs", "logs", job_id, "--follow", "--address",
                                 cluster["jobs"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "train/loss" in log.read_text()):  # stop it once it trains
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.5)
    stop = cli_ok("jobs", "stop", job_id, "--address", cluster["jobs"])
    assert "stop requested" in stop.stdout
    out, _ = follower.communicate(timeout=120)  # --follow returns when the job ends
    assert follower.returncode == 0 and out
    final = run_cli("jobs", "status", job_id, "--address", cluster["jobs"])
    assert "STOPPED" in final.stdout
    unknown = run_cli("jobs", "status", "no-such-job", "--address", cluster["jobs"])
    assert unknown.returncode == 2 and "no job 'no-such-job'" in unknown.stderr


def ray_train_workers() -> list[int]:
    """Pids of this machine's Ray Train worker processes (Ray titles them ray::RayTrainWorker...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


LIST_RAY_JOBS = """
import json, sys
from ray.job_submission import JobSubmissionClient
print(json.dumps([[j.submission_id, (j.metadata or {}).get("tlscale_job")]
                  for j in JobSubmissionClient(sys.argv[1]).list_jobs()]))
"""


def submissions(cluster) -> dict[str, list[str]]:
    """The cluster's Ray jobs by service job (asked from a fresh process: this one imported Ray before the
    fixture turned token auth on)."""
    listed = subprocess.run([sys.executable, "-c", LIST_RAY_JOBS, cluster["jobs"]], capture_output=True, text=True,
                            check=True).stdout
    found: dict[str, list[str]] = {}
    for sid, owner in json.loads(listed):
        if owner:  # (a driver that called ray.init itself is listed too, with no submission id)
            found.setdefault(owner, []).append(sid)
    return {owner: sorted(ids) for owner, ids in found.items()}


def test_service_on_ray_survives_a_server_kill_and_retries_a_killed_worker(tmp_path, cluster):
    """`tlscale serve --ray-address`: 52 jobs, 2 running as Ray jobs and 50 queued. The server is SIGKILLed
    and, while it is down, a Ray Train worker of one running job is killed too. The server started again
    has all 52; it follows the untouched job to its end with no second Ray submission, and retries the
    other (an infrastructure failure) as a second Ray job that resumes from the job's checkpoint and ends
    as the uninterrupted one did."""
    from tests.service.conftest import free_port as loopback_port, httpx, wait_for_state
    from tests.service.test_api import sst2_tsv, tiny_job_spec, upload
    from tests.service.test_restart import start
    from tlscale.service.server import open_store
    from tlscale.service.teams import create_team, set_quotas

    data_dir = tmp_path / "service"
    _, token = create_team(open_store(data_dir, None), "ray-team")
    set_quotas(open_store(data_dir, None), "ray-team", max_queued=60, max_running=2)
    port, options = loopback_port(), ("--ray-address", cluster["jobs"], "--capacity", "2")
    server = start(data_dir, port, *options)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=60)
    files = [upload(client, name, sst2_tsv(first, count)).json()["id"]
             for name, first, count in (("train.tsv", 0, 160), ("dev.tsv", 1000, 64))]
    on_ray = {"resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0}}
    long = tiny_job_spec(*files, save_every_steps=10, eval_every_steps=None)  # 20 steps
    running = [client.post("/v1/fine_tuning/jobs", json={"spec": {**long, **on_ray}}).json()["id"] for _ in range(2)]
    queued = [client.post("/v1/fine_tuning/jobs", json={"spec": {**tiny_job_spec(*files, max_steps=2), **on_ray}})
              .json()["id"] for _ in range(50)]
    folders = [data_dir / "jobs" / job_id / "run" for job_id in running]
    deadline = time.monotonic() + 240
    while not all((f / "checkpoints" / "latest.json").is_file() for f in folders):
        assert time.monotonic() < deadline, [client.get(f"/v1/fine_tuning/jobs/{j}").json() for j in running]
        time.sleep(0.2)
    server.kill()
    server.wait()
    victims = ray_train_workers()
    assert len(victims) == 2, victims  # one per running job, each on its own node
    os.kill(victims[0], signal.SIGKILL)

    server = start(data_dir, port, *options)
    try:
        listed = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        assert sorted(j["id"] for j in listed) == sorted(running + queued)
        assert {j["status"] for j in listed if j["id"] in queued} == {"queued"}
        for job_id in queued:  # each would take a Ray job's start-up: cancelled, they never start
            assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        ended = [wait_for_state(client, job_id, ("succeeded", "failed", "cancelled"), timeout=400) for job_id in running]
        assert [job["status"] for job in ended] == ["succeeded"] * 2, ended
        assert sorted(job["attempt"] for job in ended) == [1, 2], ended
        retried = next(job["id"] for job in ended if job["attempt"] == 2)
        other = next(j for j in running if j != retried)
        submitted = submissions(cluster)
        assert submitted[retried] == [f"tlscale-{retried}-attempt-1", f"tlscale-{retried}-attempt-2"]
        assert submitted[other] == [f"tlscale-{other}-attempt-1"]  # re-attached: never submitted again
        assert sorted(submitted) == sorted(running)  # the cancelled ones never reached Ray
        events = client.get(f"/v1/fine_tuning/jobs/{retried}/events", params={"limit": 1000}).json()["data"]
        assert [e["data"]["attempt"] for e in events if e["type"] == "restart"] == [1], events
        metrics = json.loads((data_dir / "jobs" / retried / "run" / "metrics.json").read_text())
        assert metrics["resumed_from_step"] == 10 and metrics["steps"] == 20
        assert losses(data_dir / "jobs" / retried / "run") == pytest.approx(losses(data_dir / "jobs" / other / "run"),
                                                                            abs=1e-5)  # as if never interrupted
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_announced_preemption_takes_a_checkpoint_before_the_node_goes(tmp_path, cluster, rows):
    """Ray drains a node before reclaiming it (spot preemption); the workers checkpoint at once, with no
    periodic checkpoints configured, and hand it to Ray. Last in this module: it leaves a node drained."""
    spec_file = spec_for(tmp_path, rows, "preempted", {"backend": "ddp"}, cluster["address"], steps=300)
    raw = yaml.safe_load(spec_file.read_text())
    raw["training"].pop("save_every_steps")
    raw["training"]["epochs"] = 30
    spec_file.write_text(yaml.safe_dump(raw))
    run = subprocess.Popen([sys.executable, "-m", "tlscale", "train", str(spec_file), "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "preempted" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("train/loss") < 3):
            assert run.poll() is None, run.stdout.read()[-3000:]
            time.sleep(1)
        ray = Path(sys.executable).with_name("ray")
        nodes = subprocess.run([str(ray), "list", "nodes", "--address", cluster["jobs"], "-f", "is_head_node=False",
                                "--format", "json"], capture_output=True, text=True, check=True)
        worker_node = json.loads(nodes.stdout)[0]["node_id"]
        subprocess.run([str(ray), "drain-node", "--address", cluster["address"], "--node-id", worker_node,
                        "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                        "--deadline-remaining-seconds", "30"], check=True, capture_output=True)
        checkpoints = tmp_path / "preempted" / "checkpoints"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(checkpoints.glob("step-*")):
            time.sleep(1)
        saved = list(checkpoints.glob("step-*"))
        assert len(saved) == 1, "no just-in-time checkpoint after the preemption notice"
        ray_storage = tmp_path / "preempted" / "ray"
        while time.monotonic() < deadline and not list(ray_storage.glob("*/checkpoint_*/trainer_state.json")):
            time.sleep(1)  # handed to Ray just after it is written locally
        reported = [c for c in ray_storage.glob("*/checkpoint_*") if c.is_dir()]
        assert reported and (reported[0] / "trainer_state.json").is_file()
    finally:
        run.kill()  # the group cannot be placed again on the one node left; the fixture stops the cluster
        run.wait(timeout=60)
