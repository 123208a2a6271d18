"""Files an evaluation leaves behind: predictions.jsonl and a confusion-matrix PNG."""
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
