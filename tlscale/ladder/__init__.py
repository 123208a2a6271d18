"""`tlscale ladder SPEC`: for one dataset, methods x label budgets x seeds, every cell a run of its own on the
same evaluation set; one table (ladder.json, ladder.md), two pictures, and the cheapest method near the best
at each budget. Rerunning skips finished cells and resumes interrupted ones."""
from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from tlscale.errors import ConfigError, RunStateError
from tlscale.spec import JobSpec

# Every top-level name a ladder folder holds: anything else is the user's and the folder is refused
LADDER_FILES = ("ladder.yaml", ".ladder.lock", "cells", "outcomes.json", "latency.json", "ladder.json", "ladder.md",
                "learning-curve.png", "cost-quality.png", ".*.tmp")


def check_ladder_folder(folder: Path) -> None:
    """New, empty or an earlier ladder's: never a training run or a folder of the user's files."""
    import fnmatch

    from tlscale.run_folder import check_folder_shape

    check_folder_shape(folder)
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir()
                         if not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in LADDER_FILES))
        if foreign:
            raise RunStateError(f"output_dir: '{folder}' holds files a ladder did not write ({', '.join(foreign[:8])}"
                                f"{' ...' if len(foreign) > 8 else ''}); give the ladder a new or empty folder")


def run_ladder(spec: JobSpec, log=print) -> dict:
    from tlscale.ladder.cells import plan, read_pool

    if spec.ladder is None:
        raise ConfigError("ladder: the spec has no ladder section; add one (see `tlscale schema`)")
    folder = Path(spec.output_dir)
    check_ladder_folder(folder)
    pool = read_pool(spec)
    cells = plan(spec, pool, folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".ladder.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"output_dir: another `tlscale ladder` is running in '{folder}'") from None
        (folder / "ladder.yaml").write_text(_dump(spec))
        outcomes = _run(spec, cells, folder, log)
        return _report(spec, cells, pool, outcomes, folder, log)


def _dump(spec: JobSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def _run(spec: JobSpec, cells, folder: Path, log) -> dict:
    from tlscale.files import write_json_atomic
    from tlscale.ladder.execute import TEACHER_FAILED, Outcome, run_local, run_on_ray

    ladder = spec.ladder
    pending = [c for c in cells if not c.done()]
    pending += [c for c in cells if c not in pending and c.teacher in pending]  # a teacher running again
    pending = [c for c in cells if c in pending]  # (in table order)
    how = {"local": "one after another", "ray": "as Ray tasks", "service": "as jobs of the service"}[ladder.runner]
    log(f"{len(cells)} cells: {len(cells) - len(pending)} finished earlier, {len(pending)} to run ({how})")
    counter = {"n": 0}

    store = folder / "outcomes.json"
    outcomes = {k: Outcome(**v) for k, v in json.loads(store.read_text()).items()} if store.is_file() else {}

    def report(cell, outcome, retrying: bool) -> None:
        if not retrying:  # kept as each cell ends: a ladder stopped half way keeps its cells' figures
            outcomes[cell.key] = outcome
            write_json_atomic(store, {k: asdict(v) for k, v in outcomes.items()})
        if retrying:
            log(f"  {cell.key}: exit {outcome.returncode}, running it again (log: {cell.folder / 'log.txt'})")
            return
        counter["n"] += 1
        head = f"[{counter['n']}/{len(pending)}] {cell.key}:"
        if outcome.returncode == 0:
            log(f"{head} {_figure(cell, spec)} ({outcome.seconds:.0f} s)")
        elif outcome.returncode == TEACHER_FAILED:
            log(f"{head} not run: its teacher {cell.teacher.key} failed")
        else:
            log(f"{head} failed, exit {outcome.returncode} (log: {cell.folder / 'log.txt'})")

    if ladder.runner == "ray":
        for wave in _waves(pending, report):
            run_on_ray(wave, ladder.retries, report, ladder.address, ladder.cpus_per_cell)
    elif ladder.runner == "service":
        from tlscale.ladder.service import run_on_service

        try:
            run_on_service(pending, ladder.retries, report, ladder.server, folder)
        except KeyboardInterrupt:
            log("interrupted: the cells' jobs go on on the server; run the ladder again to follow them "
                "(`tlscale jobs cancel JOB --server ...` stops one; each cell's job.json names its jobs)")
            raise
    else:
        for wave in _waves(pending, report):
            run_local(wave, ladder.retries, report)
    return outcomes


def _waves(pending: list, report):
    """The cells without a teacher, then those whose teacher has finished (the others are reported failed)."""
    from tlscale.ladder.execute import TEACHER_FAILED, Outcome

    yield [c for c in pending if c.teacher is None]
    students = []
    for cell in (c for c in pending if c.teacher is not None):
        if (cell.teacher.run_dir / "metrics.json").is_file():
            students.append(cell)
        else:
            cell.folder.mkdir(parents=True, exist_ok=True)
            with (cell.folder / "log.txt").open("a") as log:
                log.write(f"not run: its teacher {cell.teacher.key} has no finished run\n")
            report(cell, Outcome(TEACHER_FAILED, 0.0, None), retrying=False)
    yield students


def _figure(cell, spec: JobSpec) -> str:
    from tlscale.ladder.report import cell_figures

    metric = _metric(spec)
    figures = cell_figures(cell, metric)
    return f"{metric} {figures['value']:.4f}" if figures and figures["value"] is not None else "no figure"


def _metric(spec: JobSpec) -> str:
    from tlscale.tasks import TASKS

    return spec.ladder.metric or TASKS.get(spec.task).headline_metrics[0]


def _latency(cells, folder: Path, log) -> dict[str, float]:
    """Predict seconds per example of each trained method, from one finished cell (its largest budget), in a
    process of its own; remembered in latency.json while that cell's run is unchanged."""
    from tlscale.files import write_json_atomic
    from tlscale.ladder.report import budget_order

    store = folder / "latency.json"
    known = json.loads(store.read_text()) if store.is_file() else {}
    result = {}
    for method in dict.fromkeys(c.method for c in cells if c.command == "train"):
        finished = [c for c in cells if c.method == method and (c.run_dir / "metrics.json").is_file()
                    and (c.run_dir / "model").is_dir()]
        if not finished:
            continue
        cell = max(finished, key=lambda c: (budget_order(c.budget), -c.seed))
        stamp = (cell.run_dir / "metrics.json").stat().st_mtime
        entry = known.get(method)
        if not entry or entry["cell"] != cell.key or entry["stamp"] != stamp:
            done = subprocess.run([sys.executable, "-m", "tlscale.ladder.latency", str(cell.run_dir / "model"),
                                   str(cell.spec_file)], capture_output=True, text=True)
            if done.returncode != 0:
                log(f"  could not time predictions of {method}: {done.stderr.strip().splitlines()[-1:]}")
                continue
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            entry = known[method] = {"cell": cell.key, "stamp": stamp,
                                     "seconds_per_example": timing["seconds"] / max(1, timing["examples"])}
        result[method] = entry["seconds_per_example"]
    write_json_atomic(store, known)
    return result


def _report(spec: JobSpec, cells, pool, outcomes, folder: Path, log) -> dict:
    from tlscale.ladder.plots import plot_cost_quality, plot_learning_curve
    from tlscale.ladder.report import eval_check, eval_line, recommend, recommendation_line, summarize, \
        write_reports

    metric = _metric(spec)
    rows = summarize(cells, outcomes, metric, _latency(cells, folder, log))
    check, picks = eval_check(cells, metric), recommend(rows)
    title = f"{Path(spec.data.train_file).parent.name or spec.data.train_file}: {spec.model.name_or_path}"
    write_reports(folder, rows, picks, pool, check, metric, title)
    if any(r.mean is not None for r in rows):
        plot_learning_curve(folder / "learning-curve.png", rows, metric, pool.majority,
                            pool.train_examples / pool.classes, f"{title}: {metric} by label budget")
        plot_cost_quality(folder / "cost-quality.png", rows, metric, f"{title}: cost and quality")
    return {"rows": rows, "metric": metric, "eval_line": eval_line(check), "same_eval": check.get("same", False),
            "recommendation": recommendation_line(picks, metric), "folder": folder,
            "failed": sum(len(r.failed) for r in rows)}
