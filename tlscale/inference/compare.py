"""`tlscale compare RUN ...`: trained, prompted and probed runs side by side, from their metrics.json
(the shared schema: `eval.<metric>`, and for few-shot runs `eval.<metric>_std` over seeds)."""
from __future__ import annotations

import json
from dataclasses import dataclass
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
        seeds = metrics["eval"].get("seeds", 1)
        return f"fewshot {metrics['method']} (k={shots}, {seeds} seed{'s' if seeds != 1 else ''})"
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


@dataclass
class Comparison:
    keys: tuple[str, ...]  # the task's headline metrics
    rows: list[dict]  # run, model, how, eval_n, and per key: value and std (None when absent)
    mixed: bool  # scored on different evaluation sets (only with allow_mixed_eval)


def compare_runs(paths: list[Path], allow_mixed_eval: bool = False) -> Comparison:
    """The runs' headline figures side by side. Runs scored on different evaluation sets (sizes, or the
    fingerprints of their examples) are refused, since their figures do not compare, unless allow_mixed_eval,
    which marks them."""
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
    keys = TASKS.get(task).headline_columns(runs[0][1]) if task in TASKS else ()
    rows = []
    for (path, metrics), size in zip(runs, sizes):
        row = {"run": str(path), "model": str(metrics.get("model", "")), "how": describe(metrics), "eval_n": size}
        for key in keys:
            row[key], row[f"{key}_std"] = metrics["eval"].get(key), metrics["eval"].get(f"{key}_std")
        rows.append(row)
    return Comparison(tuple(keys), rows, mixed)


MIXED = "different evaluation sets: these figures do not compare"


def _figure(row: dict, key: str) -> str:
    value, spread = row[key], row[f"{key}_std"]
    return "" if value is None else f"{value:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")


def rich_table(comparison: Comparison):
    from rich.table import Table

    table = Table("run", "model", "how", "eval n", *comparison.keys, title=MIXED if comparison.mixed else None,
                  title_justify="left")
    for row in comparison.rows:
        table.add_row(row["run"], row["model"], row["how"], "?" if row["eval_n"] is None else f"{row['eval_n']:,}",
                      *(_figure(row, key) for key in comparison.keys))
    return table


def write_comparison(comparison: Comparison, folder: Path) -> list[Path]:
    """compare.csv (every figure and std), compare.md (the table) and compare.png (the first headline metric
    per run, with ±1 std error bars where the run has seeds)."""
    import csv
    import io

    from tlscale.files import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    columns = ["run", "model", "how", "eval_n", *(name for key in comparison.keys for name in (key, f"{key}_std"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparison.rows)
    write_text_atomic(folder / "compare.csv", buffer.getvalue())
    lines = ([f"**{MIXED}**", ""] if comparison.mixed else []) + [
        "| run | model | how | eval n | " + " | ".join(comparison.keys) + " |",
        "|---|---|---|---:|" + "---:|" * len(comparison.keys)]
    for row in comparison.rows:
        lines.append(f"| {row['run']} | {row['model']} | {row['how']} | {row['eval_n'] or '?'} | "
                     + " | ".join(_figure(row, key) for key in comparison.keys) + " |")
    write_text_atomic(folder / "compare.md", "\n".join(lines) + "\n")
    written = [folder / "compare.csv", folder / "compare.md"]
    if comparison.keys and any(row[comparison.keys[0]] is not None for row in comparison.rows):
        plot_comparison(folder / "compare.png", comparison)
        written.append(folder / "compare.png")
    return written


def plot_comparison(path: Path, comparison: Comparison) -> None:
    from matplotlib.figure import Figure

    key = comparison.keys[0]
    rows = [r for r in comparison.rows if r[key] is not None]
    fig = Figure(figsize=(9.0, 1.4 + 0.45 * len(rows)))
    ax = fig.subplots()
    names = [f"{name}: {r['how']}" for name, r in zip(short_names([r["run"] for r in rows]), rows)]
    ax.barh(range(len(rows)), [r[key] for r in rows], xerr=[r[f"{key}_std"] or 0.0 for r in rows],
            color="#4c72b0", capsize=4, height=0.6)
    for i, r in enumerate(rows):
        ax.text(r[key], i, f"  {_figure(r, key)}", va="center", ha="left", fontsize=8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    top = max(r[key] + (r[f"{key}_std"] or 0.0) for r in rows)
    ax.set_xlim(0, top * 1.3 if top > 0 else 1)
    sizes = {r["eval_n"] for r in rows}
    ax.set_xlabel(f"{key} (error bars: ±1 std over seeds)")
    ax.set_title(MIXED if comparison.mixed else f"{key} by run" + (
        f", on the same {sizes.pop():,} evaluation examples" if len(sizes) == 1 and None not in sizes else ""))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def short_names(paths: list[str]) -> list[str]:
    """The fewest trailing path parts that tell the runs apart (ladder cells are all called 'run')."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)
