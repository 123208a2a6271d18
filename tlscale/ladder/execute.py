"""Running the cells: each is `tlscale train|fewshot cell/spec.yaml` in a process of its own (a crash, a leak
or a kill takes one cell, not the ladder), one after another here, or as Ray tasks spread over a cluster.
A finished cell is skipped; an interrupted one resumes from its checkpoint; a failure that is not the user's
(exit 2) runs again `retries` times before it is reported."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import yaml

from tlscale.ladder.cells import Cell

USER_ERROR = 2
TEACHER_FAILED = -2  # a student cell's outcome when its teacher's cell did not finish (it was not run)


@dataclass
class Outcome:
    returncode: int
    seconds: float
    peak_rss_mb: float | None  # None: not known (a service's few-shot job)
    attempts: int = 1
    node: str | None = None  # the Ray node that ran it
    job: str | None = None  # the service's job id


def cell_command(cell: Cell, changed: bool) -> list[str]:
    """The cell's command line: what is left of an interrupted run of the same recipe resumes from its
    checkpoint (training); a run of another recipe is replaced (kept aside until the new one finishes)."""
    command = [sys.executable, "-m", "tlscale", "--quiet", cell.command, str(cell.spec_file)]
    if cell.command == "train":
        command.append("--no-progress")
    if cell.command == "train" and not changed and (cell.run_dir / "checkpoints" / "latest.json").is_file():
        command.append("--resume")
    elif cell.run_dir.exists():
        command.append("--overwrite")
    return command


def prepare(cell: Cell) -> list[str]:
    """Write the cell's spec beside its run; its command line."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    changed = cell.spec_file.is_file() and not cell.same_recipe()
    if not cell.spec_file.is_file() or changed:
        cell.spec_file.write_text(yaml.safe_dump(cell.spec, sort_keys=False))
    return cell_command(cell, changed=changed)


def run_process(command: list[str], log_file: str, threads: int | None = None) -> tuple[int, float, float]:
    """Run command with its output in log_file; (exit code, seconds, peak resident memory in MB)."""
    import subprocess

    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(log_file, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.terminate()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024  # KiB on Linux


def run_on_node(command: list[str], log_file: str, threads: int) -> tuple[int, float, float, str]:
    """run_process inside a Ray task, naming the node it ran on."""
    import ray

    return (*run_process(command, log_file, threads), ray.get_runtime_context().get_node_id())


def run_local(cells: list[Cell], retries: int, report) -> dict[str, Outcome]:
    outcomes = {}
    for cell in cells:
        attempts = 0
        while True:
            attempts += 1
            code, seconds, peak = run_process(prepare(cell), str(cell.folder / "log.txt"))
            if code == 0 or code == USER_ERROR or attempts > retries:
                break
            report(cell, Outcome(code, seconds, peak, attempts), retrying=True)
        outcomes[cell.key] = Outcome(code, seconds, peak, attempts)
        report(cell, outcomes[cell.key], retrying=False)
    return outcomes


def run_on_ray(cells: list[Cell], retries: int, report, address: str | None, cpus: int) -> dict[str, Outcome]:
    """Every pending cell is a Ray task reserving `cpus` CPUs (and as many torch threads); Ray spreads them
    over the nodes. The ladder folder and the data must be at the same path on every node."""
    from tlscale.errors import require

    ray = require("ray")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False,
                 logging_level="WARNING", configure_logging=False)
    task = ray.remote(num_cpus=cpus, max_retries=0, scheduling_strategy="SPREAD")(run_on_node)
    pending, attempts, outcomes = {}, {cell.key: 0 for cell in cells}, {}

    def submit(cell: Cell) -> None:
        attempts[cell.key] += 1
        pending[task.remote(prepare(cell), str(cell.folder / "log.txt"), cpus)] = cell

    for cell in cells:
        submit(cell)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ready[0])
        try:
            code, seconds, peak, node = ray.get(ready[0])
        except Exception as exc:  # the task's node went away: an infrastructure failure
            with (cell.folder / "log.txt").open("a") as log:
                log.write(f"\nray: {exc}\n")
            code, seconds, peak, node = -1, 0.0, 0.0, None
        outcome = Outcome(code, seconds, peak, attempts[cell.key], node)
        if code not in (0, USER_ERROR) and attempts[cell.key] <= retries:
            report(cell, outcome, retrying=True)
            submit(cell)
            continue
        outcomes[cell.key] = outcome
        report(cell, outcome, retrying=False)
    return outcomes
