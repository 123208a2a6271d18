"""`tlscale ladder` end to end on a tiny random BERT and 160 real SST-2 rows: every cell runs as its own
process, a cell killed mid-run is run again, the table and pictures come out, a rerun skips finished cells
and a changed recipe reruns only the cells it changes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli, wait_for, write_spec


def ladder_spec(tmp_path, train, dev) -> dict:
    return {"task": "text_classification", "seed": 42, "output_dir": str(tmp_path / "ladder"),
            "model": {"name_or_path": "tiny:bert", "max_length": 48},
            "data": {"train_file": str(train), "eval_file": str(dev), "text_column": "sentence",
                     "label_column": "label", "labels": ["negative", "positive"]},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "report_to": []},
            "ladder": {"methods": ["linear_probe", "full"], "budgets": [4, "all"], "seeds": [0, 1], "min_steps": 6}}


def training_processes(marker: str) -> list[int]:
    """pids of `tlscale train` processes whose command line names marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"train" in command and any(marker.encode() in part for part in command):
            found.append(int(pid))
    return found


def test_ladder_runs_every_cell_retries_a_killed_one_and_reruns_only_what_changed(tmp_path, small_sst2):
    spec = write_spec(tmp_path / "ladder.yaml", ladder_spec(tmp_path, *small_sst2))
    folder = tmp_path / "ladder"
    killed_cell = folder / "cells" / "full" / "k4" / "seed0"
    ladder = subprocess.Popen([sys.executable, "-m", "tlscale", "ladder", str(spec)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # an infrastructure failure: the first training cell's process dies (SIGKILL) once it has started
    assert wait_for(lambda: training_processes(str(killed_cell)), timeout=240), "the training cell never started"
    time.sleep(1.0)
    for pid in training_processes(str(killed_cell)):
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = ladder.communicate(timeout=600)
    assert ladder.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "full k=4 seed 0: exit -9, running it again" in stderr
    assert "6 cells: 0 finished earlier, 6 to run" in stderr
    assert "Every cell was scored on the same 64 evaluation examples" in stdout
    assert "Cheapest method within 1 point of the best: 4/class:" in stdout

    result = json.loads((folder / "ladder.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert list(rows) == [("linear_probe", 4), ("full", 4), ("full", "all")]
    assert all(r["seeds"] == 2 and 0.0 <= r["mean"] <= 1.0 and r["std"] >= 0.0 for r in rows.values())
    assert all(r["train_seconds"] > 0 and r["predict_ms_per_1000"] > 0 and r["peak_rss_mb"] > 50
               for r in rows.values())
    assert rows[("linear_probe", 4)]["trainable_params"] == 32 + 1  # logistic regression on 32 dims, two classes
    assert rows[("full", 4)]["trainable_params"] == rows[("full", "all")]["trainable_params"] > 10_000
    assert result["eval"]["same"] is True and result["eval"]["examples"] == 64
    assert abs(result["baselines"]["majority_class"] - 0.5) < 0.2
    outcomes = json.loads((folder / "outcomes.json").read_text())
    assert outcomes["full k=4 seed 0"]["attempts"] == 2 and outcomes["full k=4 seed 1"]["attempts"] == 1
    small = json.loads((killed_cell / "run" / "metrics.json").read_text())
    assert small["train_examples"] == 8 and small["steps"] >= 6 and small["seed"] == 0
    whole = json.loads((folder / "cells" / "full" / "kall" / "seed1" / "run" / "metrics.json").read_text())
    assert whole["train_examples"] == 160 and whole["data"]["eval_sha256"] == small["data"]["eval_sha256"]
    table = (folder / "ladder.md").read_text()
    assert "| full | 4 |" in table and "| linear_probe | 4 |" in table and "Cheapest method" in table
    for picture in ("learning-curve.png", "cost-quality.png"):
        assert (folder / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (folder / picture).stat().st_size > 20_000

    stamps = {p: p.stat().st_mtime for p in folder.glob("cells/*/*/*/run/metrics.json")}
    again = run_cli("ladder", str(spec), "ladder.min_steps=8")  # 8 steps: only the 4-per-class cells change
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "6 cells: 4 finished earlier, 2 to run" in again.stderr
    changed = {p for p, stamp in stamps.items() if p.stat().st_mtime != stamp}
    assert changed == {folder / "cells" / "full" / "k4" / f"seed{s}" / "run" / "metrics.json" for s in (0, 1)}
    assert json.loads((killed_cell / "run" / "metrics.json").read_text())["steps"] >= 8


def test_a_self_trained_method_runs_after_its_teacher_and_costs_both(tmp_path, small_sst2):
    """A `teacher:` entry: each student cell learns from its teacher cell (same budget and seed), a few-shot run
    fitted again in the student's process; the student's train seconds count the teacher's; a changed teacher
    recipe runs the student again too."""
    train, dev = small_sst2
    raw = ladder_spec(tmp_path, train, dev)
    raw["ladder"].update(budgets=[4], seeds=[0], methods=[
        "linear_probe", {"name": "full", "label": "self-trained", "teacher": "linear_probe",
                         "overrides": [f"distill.unlabeled_file={train}", "distill.select_per_class=20"]}])
    spec = write_spec(tmp_path / "ladder.yaml", raw)
    result = run_cli("ladder", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = tmp_path / "ladder"
    teacher = json.loads((folder / "cells" / "linear_probe" / "k4" / "seed0" / "run" / "metrics.json").read_text())
    student = json.loads((folder / "cells" / "self-trained" / "k4" / "seed0" / "run" / "metrics.json").read_text())
    distill = student["data"]["distill"]
    assert distill["teachers"][0]["fewshot_method"] == "linear_probe"
    assert distill["teachers"][0]["run_eval"]["accuracy"] == teacher["eval"]["accuracy"]
    assert distill["labelled"] == 8 and distill["teacher_train_accuracy"] == 1.0  # it fitted on those 8
    assert student["train_examples"] == 8 + 40
    rows = {r["method"]: r for r in json.loads((folder / "ladder.json").read_text())["rows"]}
    assert rows["self-trained"]["train_seconds"] == pytest.approx(
        student["train_runtime_s"] + teacher["seeds"]["0"]["train_seconds"], abs=0.02)
    again = run_cli("ladder", str(spec), "fewshot.batch_size=16")  # the teacher's recipe only
    assert again.returncode == 0 and "2 cells: 0 finished earlier, 2 to run" in again.stderr, again.stderr[-2000:]
