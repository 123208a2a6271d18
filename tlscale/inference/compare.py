"""`tlscale compare RUN ...`: trained, prompted and probed runs side by side, from their metrics.json
(the shared schema: `eval.<metric>`, and for few-shot runs `eval.<metric>_std` over seeds)."""
from __future__ import annotations

import json
from pathlib import Path

from tlscale.errors import ConfigError

def load_run(path: Path) -> dict:
    metrics_file = path / "metrics.json" if path.is_dir() else path
    if not metrics_file.is_file():
        raise ConfigError(f"RUN: '{path}' has no metrics.json (not a finished tlscale run)")
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{metrics_file}: not JSON ({exc})") from None
    if "eval" not in metrics or "task" not in metrics:
        raise ConfigError(f"{metrics_file}: no 'task' and 'eval' figures; was it written by tlscale?")
    return metrics


def describe(metrics: dict) -> str:
    if "method" in metrics:  # a few-shot run
        shots = metrics["fewshot"]["k"]
        return f"fewshot {metrics['method']} (k={shots}, {metrics['eval'].get('seeds', 1)} seeds)"
    return f"trained: {metrics.get('strategy', '?')} ({metrics.get('train_examples', '?')} examples)"


def compare_table(paths: list[Path]):
    from rich.table import Table

    runs = [(path, load_run(path)) for path in paths]
    tasks = {m["task"] for _, m in runs}
    if len(tasks) > 1:
        raise ConfigError(f"RUN: the runs are of different tasks {sorted(tasks)}; compare runs of one task")
    from tlscale.tasks import TASKS

    task = tasks.pop()
    keys = TASKS.get(task).headline_metrics if task in TASKS else ()
    table = Table("run", "model", "how", *keys, title_justify="left")
    for path, metrics in runs:
        cells = []
        for key in keys:
            value, spread = metrics["eval"].get(key), metrics["eval"].get(f"{key}_std")
            cells.append("" if value is None else f"{value:.4f}" + (f" ± {spread:.4f}" if spread is not None else ""))
        table.add_row(str(path), str(metrics.get("model", "")), describe(metrics), *cells)
    return table
