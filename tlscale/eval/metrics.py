"""The metrics registry (name, direction, meaning) and classification metrics from probabilities
(torchmetrics' definitions). A task lists the metrics it reports; keep-best and comparisons read their direction here."""
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
    scale: float = 1.0  # the value of a perfect score (100 for the SQuAD percentages); multi_task averages value / scale

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.direction == "max" else value < than)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, direction: str, description: str, scale: float = 1.0) -> Metric:
    if direction not in ("max", "min"):
        raise ValueError(f"metric '{name}': direction must be 'max' or 'min', not '{direction}'")
    return METRICS.register(name)(Metric(name, direction, description, scale))


register_metric("accuracy", "max", "share of examples whose most probable label is the gold one")
register_metric("f1_macro", "max", "F1 per class, averaged over classes (each class counts the same)")
register_metric("ece", "min", "expected calibration error: |confidence - accuracy| over probability bins")
register_metric("loss", "min", "mean cross-entropy (per example; per token for language models)")
register_metric("exact_match", "max", "SQuAD exact match (%), answers normalised as the official script does", 100.0)
register_metric("f1", "max", "SQuAD token-overlap F1 (%), best over the gold answers", 100.0)
register_metric("perplexity", "min", "exp(loss) over held-out completion tokens")


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, label_names: list[str],
                           calibration_bins: int = 15) -> dict:
    """accuracy, macro-F1, per-class P/R/F1, expected calibration error and the confusion matrix.

    The same definitions as torchmetrics' multiclass functions (a test checks them against each other on
    random and on edge cases), counted here with a confusion matrix: importing torchmetrics pulls in scipy's
    signal and stats modules, 1.2-2 s in every process that scores a run."""
    import torch

    k = len(label_names)
    probs, labels = probs.float(), labels.long()
    confidence, predicted = probs.max(dim=1)
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)  # rows: gold, columns: predicted
    tp, predicted_count, support = confusion.diag().float(), confusion.sum(0).float(), confusion.sum(1)
    precision = _safe_divide(tp, predicted_count)
    recall = _safe_divide(tp, support.float())
    f1 = _safe_divide(2 * tp, predicted_count + support.float())
    seen = (predicted_count + support) > 0  # macro F1 leaves out classes neither present nor predicted
    return {
        "accuracy": (predicted == labels).float().mean().item(),
        "f1_macro": (f1[seen].mean() if seen.any() else torch.tensor(0.0)).item(),
        "ece": expected_calibration_error(confidence, predicted == labels, calibration_bins),
        "loss": torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "num_examples": int(labels.numel()),
        "per_class": {
            name: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                   "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.tolist(),
    }


def _safe_divide(numerator, denominator):
    """0 where the denominator (a count) is 0, as torchmetrics does."""
    import torch

    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.zeros_like(numerator))


def expected_calibration_error(confidence, correct, bins: int) -> float:
    """L1 calibration error over equal-width confidence bins (a confidence on an inner edge goes up a bin)."""
    import torch

    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    index = torch.bucketize(confidence, edges, right=True) - 1
    count = torch.zeros(bins + 1, dtype=confidence.dtype).scatter_add_(0, index, torch.ones_like(confidence))
    confidence_sum = torch.zeros_like(count).scatter_add_(0, index, confidence)
    correct_sum = torch.zeros_like(count).scatter_add_(0, index, correct.to(confidence.dtype))
    gap = torch.nan_to_num(correct_sum / count) - torch.nan_to_num(confidence_sum / count)
    return (gap.abs() * count / count.sum()).sum().item()
