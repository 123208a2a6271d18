"""A user's files are never deleted or corrupted: --overwrite, concurrent runs, result commands, crash-safe finish.

Each test puts real user files next to (or inside) the paths a command is pointed at, and checks them byte for
byte afterwards."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_spec, write_spec
from tlscale.errors import RunStateError
from tlscale.run_folder import LOCK, REPLACED, claim, is_run_file


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def spec(tmp_path, small_sst2):
    train_file, dev_file = small_sst2
    raw = tiny_spec(tmp_path / "run", train_file, dev_file)
    raw["training"].update(epochs=1, save_every_steps=5, log_every_steps=2)
    return raw


@pytest.fixture
def user_folder(tmp_path, small_sst2):
    """A project folder as a user keeps it: data, notes, a spec."""
    folder = tmp_path / "project"
    folder.mkdir()
    for path in small_sst2:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("which runs were good\n")
    return folder


def cli(*args: str, cwd: Path | None = None) -> SimpleNamespace:
    """The real command in this process (no interpreter start-up per call); stdout and stderr together."""
    from typer.testing import CliRunner

    from tlscale.cli import app

    before = Path.cwd()
    os.chdir(cwd or before)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(before)
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "Traceback: " + repr(result.exception)
    return SimpleNamespace(returncode=result.exit_code, stdout=text, stderr=text)


def train(spec_path: Path, *extra: str, cwd: Path | None = None):
    return cli("train", str(spec_path), "--no-progress", *extra, cwd=cwd)


# ---- --overwrite ----------------------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_holding_user_files(tmp_path, spec, user_folder):
    before = snapshot(user_folder)
    path = write_spec(tmp_path / "spec.yaml", {**spec, "output_dir": str(user_folder)})
    for command in (("validate", str(path)), *(("train", str(path), *flags) for flags in ((), ("--overwrite",),
                                                                                              ("--resume",)))):
        result = cli(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "holds files tlscale did not write" in result.stderr and "notes.txt" in result.stderr
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("output_dir", [".", "${RUNS_DIR}", "${RUNS_DIR}/.."])
def test_output_dir_that_is_the_current_folder_is_refused(user_folder, spec, output_dir):
    """RUNS_DIR unset once turned output_dir into the project folder and --overwrite deleted it."""
    os.environ.pop("RUNS_DIR", None)
    path = write_spec(user_folder / "spec.yaml", {**spec, "output_dir": output_dir})
    before = snapshot(user_folder)
    for result in (train(path, "--overwrite", cwd=user_folder), cli("validate", str(path), cwd=user_folder)):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert ("RUNS_DIR" in result.stderr) if "$" in output_dir else ("current directory" in result.stderr)
    assert snapshot(user_folder) == before


def test_output_dir_that_is_a_file_or_under_one(tmp_path, spec):
    (tmp_path / "afile").write_text("mine\n")
    for output_dir, message in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "run", "which is a file")):
        result = train(write_spec(tmp_path / "spec.yaml", {**spec, "output_dir": str(output_dir)}))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_a_failing_overwrite_gives_the_finished_run_back(tmp_path, spec, monkeypatch):
    """The new run fails after it started (here: a crash at its third step): the finished run it was
    replacing is back in place, byte for byte, and nothing was set aside for good."""
    from tlscale.spec import spec_from_dict
    from tlscale import train as train_in_process
    from tlscale.training import loop

    job = spec_from_dict(spec)
    train_in_process(job, show_progress=False)
    finished = snapshot(tmp_path / "run")
    calls = []
    original = loop.forward_backward

    def crash_on_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", crash_on_third_step)
    with pytest.raises(RuntimeError, match="simulated"):
        train_in_process(job, overwrite=True, show_progress=False)
    assert len(calls) == 3
    assert {k: v for k, v in snapshot(tmp_path / "run").items() if k != LOCK} == \
        {k: v for k, v in finished.items() if k != LOCK}
    assert not (tmp_path / "run" / REPLACED).exists()


def test_overwrite_replaces_a_run_only_once_the_new_one_finished(tmp_path, spec):
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert train(path).returncode == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    stopped = train(path, "--overwrite", "training.epochs=3", "--stop-after-steps", "4")
    assert stopped.returncode == 0, stopped.stderr
    assert "kept in" in stopped.stderr and (tmp_path / "run" / REPLACED / "metrics.json").is_file()
    assert json.loads((tmp_path / "run" / REPLACED / "metrics.json").read_text()) == first
    resumed = train(path, "--resume", "training.epochs=3")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 3
    assert not (tmp_path / "run" / REPLACED).exists()


# ---- one run per folder -------------------------------------------------------------------------------


def _claim_at_barrier(path, barrier, results):
    barrier.wait()
    try:
        with claim(Path(path)):
            results.put("claimed")
            barrier.wait()  # hold the lock until every process has tried
    except RunStateError as exc:
        results.put(str(exc))
        barrier.wait()


def test_two_runs_started_at_the_same_moment_one_is_refused(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_claim_at_barrier, args=(tmp_path / "run", barrier, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    outcomes = [results.get(timeout=5) for _ in workers]
    assert outcomes.count("claimed") == 1, outcomes
    assert all("in use by another run (pid" in o for o in outcomes if o != "claimed")


def test_a_second_train_on_a_running_folder_exits_2(tmp_path, spec):
    import subprocess
    import sys
    import time

    spec["training"].update(epochs=40)
    path = write_spec(tmp_path / "spec.yaml", spec)
    first = subprocess.Popen([sys.executable, "-m", "tlscale", "train", str(path), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for flags in ((), ("--resume",), ("--overwrite",)):
            second = train(path, *flags)
            assert second.returncode == 2 and f"in use by another run (pid {first.pid}" in second.stderr, \
                second.stderr
    finally:
        first.terminate()
        output = first.communicate(timeout=120)[0]
    assert first.returncode == 0 and "stopped after step" in output, output


def test_a_lock_left_by_a_killed_run_is_taken_over_and_reported(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    with caplog.at_level("WARNING", logger="tlscale"), claim(tmp_path / "run") as held:
        assert held.fd >= 0
    assert "stale lock" in caplog.text and "pid 999999 on host elsewhere" in caplog.text


# ---- result commands never replace a run's files ----------------------------------------------------------


def test_result_commands_refuse_a_runs_own_files(tmp_path, spec):
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert train(path).returncode == 0
    run = tmp_path / "run"
    before = snapshot(run)
    attempts = [
        ("eval", str(path), "--checkpoint", str(run / "model"), "--output-dir", str(run)),
        ("predict", "--checkpoint", str(run / "model"), "--input", spec["data"]["eval_file"],
         "--output", str(run / "metrics.json")),
        ("predict", "--checkpoint", str(run / "model"), "--input", spec["data"]["eval_file"], "--output", str(run)),
        ("schema", "-o", str(run / "spec.yaml")),
    ]
    for args in attempts:
        result = cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
        assert str(run) in result.stderr, result.stderr
    assert snapshot(run) == before
    evaluated = cli("eval", str(path), "--checkpoint", str(run / "model"))  # default: RUN/eval, twice
    assert evaluated.returncode == 0 and cli("eval", str(path), "--checkpoint", str(run / "model")).returncode == 0
    assert (run / "eval" / "metrics.json").is_file() and snapshot(run)["metrics.json"] == before["metrics.json"]
    nested = cli("schema", "-o", str(tmp_path / "new" / "folder" / "schema.json"))
    assert nested.returncode == 0 and (tmp_path / "new" / "folder" / "schema.json").is_file()


def test_eval_with_labels_other_than_the_checkpoints_is_refused(tmp_path, spec):
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert train(path).returncode == 0
    result = cli("eval", str(path), "--checkpoint", str(tmp_path / "run" / "model"),
                     "data.labels=[positive,negative]")
    assert result.returncode == 2 and "data.labels" in result.stderr and "['negative', 'positive']" in result.stderr


# ---- a crash-safe finish and faithful resumes --------------------------------------------------------------


def test_a_kill_after_the_model_before_the_metrics_resumes(tmp_path, spec):
    """model/ published, metrics.json not yet written: --resume completes the run (it is not 'finished')."""
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert train(path).returncode == 0
    reference = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").unlink()
    again = train(path)
    assert again.returncode == 2 and "already holds a started run" in again.stderr
    resumed = train(path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"] == reference["eval"]


def test_resume_logs_the_same_rows_as_an_uninterrupted_run(tmp_path, spec):
    """Stopped at step 5 (between two log steps), with a row logged after the checkpoint as a killed run
    leaves it: the resumed log has each step once, and the first loss after the resume averages the
    same steps as the uninterrupted run's."""
    spec["training"].update(epochs=2, log_every_steps=4, save_every_steps=None)
    reference = write_spec(tmp_path / "ref.yaml", {**spec, "output_dir": str(tmp_path / "ref")})
    victim = write_spec(tmp_path / "victim.yaml", spec)
    assert train(reference).returncode == 0
    assert train(victim, "--stop-after-steps", "5").returncode == 0
    with (tmp_path / "run" / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": 8, "train/loss": 9.9}) + "\n" + '{"step": 1')  # then killed mid-write
    assert train(victim, "--resume").returncode == 0

    def rows(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], round(r["train/loss"], 5)) for r in map(json.loads, lines) if "train/loss" in r]

    assert rows("run") == rows("ref") and len(rows("ref")) >= 8


def test_every_file_a_run_writes_is_known_as_a_run_file(tmp_path, spec):
    """What --overwrite accepts to replace is exactly what runs write (checked on real runs)."""
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert train(path, "training.tensorboard=true").returncode == 0
    cli("eval", str(path), "--checkpoint", str(tmp_path / "run" / "model"))
    names = [p.name for p in (tmp_path / "run").iterdir()]
    assert "eval" in names and "tensorboard" in names
    assert all(is_run_file(name) for name in names), names
