"""Classification metrics from probabilities, computed with torchmetrics."""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, label_names: list[str],
                           calibration_bins: int = 15) -> dict:
    """accuracy, macro-F1, per-class P/R/F1, expected calibration error and the confusion matrix."""
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
