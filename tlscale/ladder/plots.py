"""The ladder's two pictures. learning-curve.png: the metric against labelled examples per class (log axis),
each method's mean with a ±1 std band, and horizontal lines for the majority class, zero-shot and the best
figure with all labels. cost-quality.png: training seconds against the metric, the Pareto frontier marked
(no other cell is both cheaper and better)."""
from __future__ import annotations

import math
from pathlib import Path

from tlscale.ladder.report import Row

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
          "#64b5cd"]


def _x(budget, all_per_class: float) -> float:
    return all_per_class if budget == "all" else float(budget)


def plot_learning_curve(path: Path, rows: list[Row], metric: str, majority: float, all_per_class: float,
                        title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 5.2))
    ax = fig.subplots()
    methods = list(dict.fromkeys(r.method for r in rows))
    budgets = sorted({_x(r.budget, all_per_class) for r in rows if r.budget != 0})
    for i, method in enumerate(methods):
        points = sorted((_x(r.budget, all_per_class), r.mean, r.std) for r in rows
                        if r.method == method and r.mean is not None and r.budget != 0)
        if not points:
            continue
        xs, means, stds = zip(*points)
        color = COLORS[i % len(COLORS)]
        if len(points) == 1:  # no band at one budget: an error bar, set a little apart from the other methods'
            xs = (xs[0] * 1.04 ** (i - (len(methods) - 1) / 2),)
        ax.plot(xs, means, "o-", color=color, linewidth=1.8, markersize=4, label=method)
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=color, alpha=0.15, linewidth=0)
        if len(points) == 1:  # a band needs two budgets: one point shows its spread as an error bar
            ax.errorbar(xs, means, yerr=stds, fmt="none", ecolor=color, capsize=4, linewidth=1.2)
    ax.axhline(majority, color="grey", linestyle=":", linewidth=1.2, label=f"majority class {majority:.3f}")
    zero = [r for r in rows if r.budget == 0 and r.mean is not None]
    for r in zero:
        ax.axhline(r.mean, color="black", linestyle="--", linewidth=1.2, label=f"{r.method} (0 labels) {r.mean:.3f}")
    full = [r for r in rows if r.budget == "all" and r.mean is not None]
    if full:
        best = max(full, key=lambda r: r.mean)
        ax.axhline(best.mean, color="#c44e52", linestyle="-.", linewidth=1.2,
                   label=f"best with all labels: {best.method} {best.mean:.3f}")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"all\n({round(x):,})" if x == all_per_class and any(r.budget == "all" for r in rows)
                            else f"{x:g}" for x in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (log scale)")
    ax.set_ylabel(f"{metric} on the evaluation set")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            frontier.append(i)
            best = points[i][1]
    return frontier


def plot_cost_quality(path: Path, rows: list[Row], metric: str, title: str) -> None:
    from matplotlib.figure import Figure

    scored = [r for r in rows if r.mean is not None and r.train_seconds is not None]
    fig = Figure(figsize=(11.0, 5.6))
    ax = fig.subplots()
    methods = list(dict.fromkeys(r.method for r in rows))
    sizes = {b: 18 + 14 * k for k, b in enumerate(sorted({r.budget for r in scored},
                                                         key=lambda b: math.inf if b == "all" else b))}
    for i, method in enumerate(methods):
        mine = [r for r in scored if r.method == method]
        if mine:
            ax.scatter([max(r.train_seconds, 0.01) for r in mine], [r.mean for r in mine], s=[sizes[r.budget] for r in mine],
                       color=COLORS[i % len(COLORS)], alpha=0.85, label=method, edgecolors="white", linewidths=0.5)
    if scored:
        points = [(max(r.train_seconds, 0.01), r.mean) for r in scored]
        frontier = pareto(points)
        ax.plot([points[i][0] for i in frontier], [points[i][1] for i in frontier], "-", color="black",
                linewidth=1, alpha=0.6, label="Pareto frontier", zorder=0)
        names = []
        for n, i in enumerate(frontier, start=1):  # numbers by the points, names in a key: nothing overlaps
            r = scored[i]
            ax.annotate(str(n), points[i], textcoords="offset points", xytext=(-4, 6), fontsize=8,
                        fontweight="bold")
            budget = {"all": "all labels", 0: "no labels"}.get(r.budget, f"{r.budget}/class")
            names.append(f"{n:>2} {r.method}, {budget}: {r.mean:.3f}")
        fig.text(0.755, 0.04, "Pareto frontier:\n" + "\n".join(names), ha="left", va="bottom", fontsize=7.5,
                 family="monospace")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds per cell (log scale; mean over seeds; 0 s drawn at 0.01)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title(title + "\n(marker size grows with labels per class)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)  # long method names in the key stay whole
