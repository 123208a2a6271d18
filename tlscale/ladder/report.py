"""The ladder's results: one row per method x budget (mean ± std over seeds, cost), the baselines, whether
every cell was scored on the same evaluation examples, and the cheapest method near the best at each budget.
Written as ladder.json and ladder.md; the pictures are in ladder/plots.py."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlscale.ladder.cells import Cell, Pool
from tlscale.ladder.execute import TEACHER_FAILED, Outcome

NEAR_BEST = 0.01  # "within 1 point of the best"


@dataclass
class Row:
    method: str
    budget: int | str  # labelled examples per class (0: zero-shot), or "all"
    mean: float | None
    std: float | None
    seeds: int
    train_seconds: float | None
    predict_ms_per_1000: float | None
    trainable_params: int | None
    peak_rss_mb: float | None
    failed: list[str] = field(default_factory=list)  # "seed 1: exit 1 (log: ...)"


def cell_figures(cell: Cell, metric: str) -> dict | None:
    """metric, seconds of training, prediction seconds, trainable parameters and eval fingerprint of a cell."""
    path = cell.run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    data = metrics.get("data") or {}
    if cell.command == "fewshot":
        seed = next(iter(metrics["seeds"].values()))
        predict = seed.get("predict_seconds")
        if metrics.get("method") == "prompt":  # nothing trains: the seed's time is all prediction
            seed, predict = {**seed, "train_seconds": 0.0, "trainable_params": 0}, seed["seconds"]
        return {"value": seed.get(metric), "train_seconds": seed.get("train_seconds", seed["seconds"]),
                "predict_seconds": predict, "trainable_params": seed.get("trainable_params"),
                "eval_n": data.get("eval_examples"), "eval_sha256": data.get("eval_sha256")}
    return {"value": metrics["eval"].get(metric), "train_seconds": metrics["train_runtime_s"],
            "predict_seconds": None, "trainable_params": metrics["trainable_params"],
            "eval_n": metrics.get("eval_examples"), "eval_sha256": data.get("eval_sha256")}


def with_teacher_cost(cell: Cell, figures: dict | None, metric: str) -> dict | None:
    """A student's training time counts its teacher's: the method's cost is both."""
    teacher = cell_figures(cell.teacher, metric) if cell.teacher is not None and figures is not None else None
    if teacher is None:
        return figures
    return {**figures, "train_seconds": figures["train_seconds"] + teacher["train_seconds"]}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(cells: list[Cell], outcomes: dict[str, Outcome], metric: str, latency: dict[str, float]) -> list[Row]:
    """latency: method -> predict seconds per example, measured apart for trained methods."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.method, cell.budget), []).append(cell)
    rows = []
    for (method, budget), members in groups.items():
        figures = [(c, with_teacher_cost(c, cell_figures(c, metric), metric)) for c in members]
        done = [f for _, f in figures if f is not None and f["value"] is not None]
        mean, std = _mean_std([f["value"] for f in done])
        peaks = [outcomes[c.key].peak_rss_mb for c, f in figures if f is not None and c.key in outcomes
                 and outcomes[c.key].peak_rss_mb is not None]

        def average(key):
            values = [f[key] for f in done if f.get(key) is not None]
            return sum(values) / len(values) if values else None

        per_example = average("predict_seconds")
        per_example = per_example / done[0]["eval_n"] if per_example is not None and done[0]["eval_n"] else \
            latency.get(method)
        params = average("trainable_params")
        rows.append(Row(method, budget, mean, std, len(done), _rounded(average("train_seconds"), 2),
                        _rounded(per_example * 1e6 if per_example is not None else None, 1),
                        None if params is None else int(round(params)), _rounded(max(peaks), 0) if peaks else None,
                        [f"seed {c.seed}: {_failure(c, outcomes)}" for c, f in figures if f is None]))
    return rows


def _failure(cell: Cell, outcomes: dict[str, Outcome]) -> str:
    outcome = outcomes.get(cell.key)
    if outcome is None or outcome.returncode == TEACHER_FAILED:
        what = "not run" if outcome is None else "not run: its teacher failed"
    else:
        what = f"exit {outcome.returncode} after {outcome.attempts} attempt(s)"
    return f"{what} (log: {cell.folder / 'log.txt'})"


def _rounded(value, digits):
    return None if value is None else round(value, digits) if digits else round(value)


def eval_check(cells: list[Cell], metric: str) -> dict:
    """Were all finished cells scored on the same examples? (size and SHA-256 of the evaluation set)"""
    seen = {}
    for cell in cells:
        figures = cell_figures(cell, metric)
        if figures is not None:
            seen.setdefault((figures["eval_n"], figures["eval_sha256"]), []).append(cell.key)
    if len(seen) == 1:
        (n, sha), _ = next(iter(seen.items()))
        return {"same": True, "examples": n, "sha256": sha}
    return {"same": False, "sets": [{"examples": n, "sha256": sha, "cells": keys} for (n, sha), keys in seen.items()]}


def recommend(rows: list[Row]) -> list[dict]:
    """At each budget: the cheapest method (train seconds) within NEAR_BEST of the best. Zero-shot competes at
    every budget (it needs no labels): when describing the labels is as good, the labels are not needed yet."""
    picks = []
    budgets = sorted({r.budget for r in rows if r.budget not in (0,)}, key=budget_order)
    zero = [r for r in rows if r.budget == 0 and r.mean is not None]
    for budget in budgets:
        scored = [r for r in rows if r.budget == budget and r.mean is not None] + zero
        if not scored:
            continue
        best = max(scored, key=lambda r: r.mean)
        near = [r for r in scored if r.mean >= best.mean - NEAR_BEST]
        cheapest = min(near, key=lambda r: (r.train_seconds if r.train_seconds is not None else math.inf, -r.mean))
        picks.append({"budget": budget, "method": cheapest.method, "mean": cheapest.mean,
                      "train_seconds": cheapest.train_seconds, "best_method": best.method, "best_mean": best.mean})
    return picks


def budget_order(budget) -> float:
    return math.inf if budget == "all" else float(budget)


def recommendation_line(picks: list[dict], metric: str) -> str:
    parts = []
    for p in picks:
        where = "all labels" if p["budget"] == "all" else f"{p['budget']}/class"
        best = "" if p["method"] == p["best_method"] else f", best {p['best_method']} {p['best_mean']:.3f}"
        parts.append(f"{where}: {p['method']} ({metric} {p['mean']:.3f}, {p['train_seconds']:.0f} s{best})")
    return "Cheapest method within 1 point of the best: " + "; ".join(parts) if parts else "No finished cells."


def write_reports(folder: Path, rows: list[Row], picks: list[dict], pool: Pool, check: dict, metric: str,
                  title: str) -> None:
    from tlscale.files import write_json_atomic, write_text_atomic

    zero = next((r.mean for r in rows if r.budget == 0 and r.mean is not None), None)
    full = [r.mean for r in rows if r.budget == "all" and r.mean is not None]
    write_json_atomic(folder / "ladder.json", {
        "title": title, "metric": metric, "eval": check,
        "baselines": {"majority_class": pool.majority, "zero_shot": zero, "best_all_labels": max(full, default=None)},
        "pool": asdict(pool), "rows": [asdict(r) for r in rows], "recommendation": picks,
        "recommendation_line": recommendation_line(picks, metric)})
    write_text_atomic(folder / "ladder.md", markdown(rows, picks, pool, check, metric, title))


def eval_line(check: dict) -> str:
    if check.get("same"):
        return (f"Every cell was scored on the same {check['examples']:,} evaluation examples "
                f"(SHA-256 {str(check['sha256'])[:12]}).")
    if "sets" not in check:
        return "No cell has finished."
    return "WARNING: cells were scored on different evaluation sets: " + "; ".join(
        f"{s['examples']} examples ({str(s['sha256'])[:12]}): {len(s['cells'])} cells" for s in check["sets"])


def markdown(rows: list[Row], picks: list[dict], pool: Pool, check: dict, metric: str, title: str) -> str:
    lines = [f"# {title}", "", eval_line(check),
             f"Majority class: {metric} {pool.majority:.4f}. Training pool: {pool.train_examples:,} examples, "
             f"{pool.classes} classes.", "", recommendation_line(picks, metric), "",
             f"| method | labels per class | {metric} (mean ± std) | seeds | train s | predict ms / 1,000 | "
             "trainable params | peak memory MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        figure = "failed" if r.mean is None else f"{r.mean:.4f} ± {r.std:.4f}"
        lines.append(f"| {r.method} | {r.budget} | {figure} | {r.seeds} | {_cell(r.train_seconds)} | "
                     f"{_cell(r.predict_ms_per_1000)} | {_cell(r.trainable_params, ',')} | {_cell(r.peak_rss_mb)} |")
    failures = [f"- {r.method} k={r.budget} {f}" for r in rows for f in r.failed]
    if failures:
        lines += ["", "Failed cells:", *failures]
    return "\n".join(lines) + "\n"


def _cell(value, fmt: str = "") -> str:
    if value is None:
        return "–"
    return format(value, fmt) if fmt else (f"{value:g}" if isinstance(value, float) else str(value))


def rich_table(rows: list[Row], metric: str):
    from rich.table import Table

    table = Table("method", "labels/class", f"{metric} mean ± std", "seeds", "train s", "predict ms/1k",
                  "trainable", "peak MB", title_justify="left")
    for r in rows:
        figure = "[red]failed[/]" if r.mean is None else f"{r.mean:.4f} ± {r.std:.4f}"
        table.add_row(r.method, str(r.budget), figure, str(r.seeds), _cell(r.train_seconds),
                      _cell(r.predict_ms_per_1000), _cell(r.trainable_params, ","), _cell(r.peak_rss_mb))
    return table
