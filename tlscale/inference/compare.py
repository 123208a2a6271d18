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


def eval_size(metrics: dict) -> int | None:
    """How many examples (questions, for QA) the run's figures were scored on; None if it does not say."""
    for value in (metrics.get("eval_examples"), metrics["eval"].get("num_examples"), metrics["eval"].get("total")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    return None


def eval_fingerprint(metrics: dict) -> str | None:
    """SHA-256 of the evaluation examples (tlscale writes it under data.eval_sha256); None for older runs."""
    data = metrics.get("data")
    return data.get("eval_sha256") if isinstance(data, dict) else None


def compare_table(paths: list[Path], allow_mixed_eval: bool = False):
    """The runs' headline figures side by side. Runs scored on different evaluation sets (sizes, or the
    fingerprints of their examples) are refused, since their figures do not compare, unless allow_mixed_eval,
    which shows them under a warning."""
    from rich.table import Table

    runs = [(path, load_run(path)) for path in paths]
    tasks = {m["task"] for _, m in runs}
    if len(tasks) > 1:
        raise ConfigError(f"RUN: the runs are of different tasks {sorted(tasks)}; compare runs of one task")
    sizes = [eval_size(metrics) for _, metrics in runs]
    prints = [eval_fingerprint(metrics) for _, metrics in runs]
    mixed = len({size for size in sizes if size is not None}) > 1
    if mixed and not allow_mixed_eval:
        scored = ", ".join(f"{path}: {size if size is not None else '?'}" for (path, _), size in zip(runs, sizes))
        raise ConfigError(f"RUN: the runs were scored on evaluation sets of different sizes ({scored}), so their "
                          "figures do not compare; evaluate them on one set (`tlscale eval`), or pass "
                          "--allow-mixed-eval to see them side by side anyway")
    if len({p for p in prints if p is not None}) > 1:
        mixed = True
        if not allow_mixed_eval:
            scored = ", ".join(f"{path}: {p[:12] if p else '?'}" for (path, _), p in zip(runs, prints))
            raise ConfigError(f"RUN: the runs were scored on different evaluation examples of the same size "
                              f"(fingerprints {scored}), so their figures do not compare; evaluate them on one "
                              "set (`tlscale eval`), or pass --allow-mixed-eval to see them side by side anyway")
    from tlscale.tasks import TASKS

    task = tasks.pop()
    keys = TASKS.get(task).headline_metrics if task in TASKS else ()
    title = ("different evaluation sets: these figures do not compare" if mixed else None)
    table = Table("run", "model", "how", "eval n", *keys, title=title, title_justify="left")
    for (path, metrics), size in zip(runs, sizes):
        cells = []
        for key in keys:
            value, spread = metrics["eval"].get(key), metrics["eval"].get(f"{key}_std")
            cells.append("" if value is None else f"{value:.4f}" + (f" ± {spread:.4f}" if spread is not None else ""))
        table.add_row(str(path), str(metrics.get("model", "")), describe(metrics),
                      "?" if size is None else f"{size:,}", *cells)
    return table
