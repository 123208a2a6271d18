"""The metrics registry (name, direction, meaning) and classification metrics from probabilities
(torchmetrics). A task lists the metrics it reports; keep-best and comparisons read their direction here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlscale.registry import Registry

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "max": higher is better; "min": lower is better
    description: str

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.direction == "max" else value < than)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, direction: str, description: str) -> Metric:
    if direction not in ("max", "min"):
        raise ValueError(f"metric '{name}': direction must be 'max' or 'min', not '{direction}'")
    return METRICS.register(name)(Metric(name, direction, description))


register_metric("accuracy", "max", "share of examples whose most probable label is the gold one")
register_metric("f1_macro", "max", "F1 per class, averaged over classes (each class counts the same)")
register_metric("ece", "min", "expected calibration error: |confidence - accuracy| over probability bins")
register_metric("loss", "min", "mean cross-entropy (per example; per token for language models)")
register_metric("exact_match", "max", "SQuAD exact match (%), answers normalised as the official script does")
register_metric("f1", "max", "SQuAD token-overlap F1 (%), best over the gold answers")
register_metric("perplexity", "min", "exp(loss) over held-out completion tokens")


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, label_names: list[str],
                           calibration_bins: int = 15) -> dict:
    """accuracy, macro-F1, per-class P/R/F1, expected calibration error and the confusion matrix."""
    import torch

    from torchmetrics.functional.classification import (  # seconds to import: only when scoring
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    k = len(label_names)
    probs, labels = probs.float(), labels.long()
    common = {"num_classes": k}
    per_class = {
        "precision": multiclass_precision(probs, labels, average=None, **common),
        "recall": multiclass_recall(probs, labels, average=None, **common),
        "f1": multiclass_f1_score(probs, labels, average=None, **common),
    }
    support = torch.bincount(labels, minlength=k)
    return {
        "accuracy": multiclass_accuracy(probs, labels, average="micro", **common).item(),
        "f1_macro": multiclass_f1_score(probs, labels, average="macro", **common).item(),
        "ece": multiclass_calibration_error(probs, labels, n_bins=calibration_bins, norm="l1", **common).item(),
        "loss": torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "num_examples": int(labels.numel()),
        "per_class": {
            name: {metric: values[i].item() for metric, values in per_class.items()} | {"support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": multiclass_confusion_matrix(probs, labels, **common).tolist(),
    }
