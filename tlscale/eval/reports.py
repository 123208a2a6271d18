"""Files an evaluation and a run leave behind: predictions.jsonl, the confusion matrix, the reliability
diagram and the learning curve (PNGs drawn on a matplotlib Figure: no pyplot, no backend switched)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


def write_predictions(path: Path, texts: list[str], probs: torch.Tensor, label_names: list[str],
                      gold: list[int] | None = None, where: list[str] | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i, text in enumerate(texts):
            row = {"text": text, "label": label_names[int(probs[i].argmax())],
                   "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, probs[i])}}
            if gold:
                row["gold"] = label_names[gold[i]]
            if where:
                row["source"] = where[i]
            out.write(json.dumps(row) + "\n")
    tmp.replace(path)


def plot_confusion_matrix(path: Path, matrix: list[list[int]], label_names: list[str], title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing process-wide to switch

    size = max(4.0, 0.6 * len(label_names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> list[dict]:
    """Per equal-width confidence bin: examples, mean confidence, accuracy (the bins of the ECE: a confidence
    on an inner edge goes up a bin)."""
    import torch

    confidence = confidence.double()
    index = (torch.bucketize(confidence, torch.linspace(0, 1, bins + 1, dtype=confidence.dtype), right=True) - 1)
    index = index.clamp(0, bins - 1)  # a confidence of exactly 1 joins the last bin (the ECE keeps it apart,
    # which changes the sum only if such a sure prediction is wrong)
    rows = []
    for b in range(bins):
        chosen = index == b
        count = int(chosen.sum())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                     "confidence": float(confidence[chosen].mean()) if count else None,
                     "accuracy": float(correct[chosen].double().mean()) if count else None})
    return rows


def plot_reliability(path: Path, rows: list[dict], ece: float, title: str) -> None:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and how many
    examples each bin holds (below): where the model is over- or under-confident."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = rows[0]["high"] - rows[0]["low"]
    filled = [r for r in rows if r["count"]]
    top.bar([r["low"] for r in filled], [r["accuracy"] for r in filled], width=width, align="edge",
            color="#4c72b0", edgecolor="white", label="accuracy in the bin")
    top.plot([r["confidence"] for r in filled], [r["confidence"] for r in filled], "o", color="#dd8452",
             markersize=4, label="mean confidence in the bin")
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE {ece:.4f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([r["low"] for r in rows], [r["count"] for r in rows], width=width, align="edge", color="#8c8c8c",
               edgecolor="white")
    bottom.set_xlabel("confidence (probability of the predicted label)")
    bottom.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_learning_curve(path: Path, rows: list[dict], metric: str, title: str) -> bool:
    """Training loss and the evaluations during training against the step, from metrics.jsonl's rows;
    False (nothing written) when fewer than two losses were logged."""
    from matplotlib.figure import Figure

    losses = [(r["step"], r["train/loss"]) for r in rows if isinstance(r.get("train/loss"), (int, float))]
    scores = [(r["step"], r[f"eval/{metric}"]) for r in rows if isinstance(r.get(f"eval/{metric}"), (int, float))]
    if len(losses) < 2:
        return False
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.subplots()
    ax.plot(*zip(*losses), color="#4c72b0", linewidth=1.5, label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="#4c72b0")
    handles = ax.get_legend_handles_labels()
    if scores:
        right = ax.twinx()
        right.plot(*zip(*scores), "o-", color="#dd8452", linewidth=1.5, markersize=5, label=f"eval {metric}")
        right.set_ylabel(f"eval {metric}", color="#dd8452")
        more = right.get_legend_handles_labels()
        handles = (handles[0] + more[0], handles[1] + more[1])
    ax.legend(*handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
