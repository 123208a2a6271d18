"""Our classification metrics are torchmetrics' (the multiclass functions we used before, imported here only):
the same numbers on random predictions, on confident and tied ones, and with classes never seen."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_calibration_error,
                                                    multiclass_confusion_matrix, multiclass_f1_score,
                                                    multiclass_precision, multiclass_recall)

from tlscale.eval.metrics import classification_metrics


def theirs(probs, labels, k, bins=15):
    common = {"num_classes": k}
    return {"accuracy": multiclass_accuracy(probs, labels, average="micro", **common).item(),
            "f1_macro": multiclass_f1_score(probs, labels, average="macro", **common).item(),
            "ece": multiclass_calibration_error(probs, labels, n_bins=bins, norm="l1", **common).item(),
            "precision": multiclass_precision(probs, labels, average=None, **common).tolist(),
            "recall": multiclass_recall(probs, labels, average=None, **common).tolist(),
            "f1": multiclass_f1_score(probs, labels, average=None, **common).tolist(),
            "confusion_matrix": multiclass_confusion_matrix(probs, labels, **common).tolist()}


CASES = {
    "random 2 classes": (2, 200, None),
    "random 5 classes": (5, 333, None),
    "a class never seen nor predicted": (4, 50, "drop-class-3"),
    "confidences on the bin edges": (2, 64, "edges"),
    "all one class": (3, 40, "constant"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_numbers_as_torchmetrics(case):
    k, n, twist = CASES[case]
    generator = torch.Generator().manual_seed(len(case))
    logits = torch.randn(n, k, generator=generator) * 3
    labels = torch.randint(0, k, (n,), generator=generator)
    if twist == "drop-class-3":
        logits[:, 3] = -50
        labels[labels == 3] = 0
    if twist == "edges":  # confidences of exactly 0.6, 0.8, 1.0 fall on bin edges
        probs = torch.tensor([[0.6, 0.4], [0.2, 0.8], [1.0, 0.0], [0.4, 0.6]]).repeat(n // 4, 1)
    elif twist == "constant":
        probs = torch.tensor([[0.7, 0.2, 0.1]]).repeat(n, 1)
    else:
        probs = logits.softmax(-1)
    ours = classification_metrics(probs, labels, [str(i) for i in range(k)])
    expected = theirs(probs, labels, k)
    for key in ("accuracy", "f1_macro", "ece"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-6), key
    for metric in ("precision", "recall", "f1"):
        assert [ours["per_class"][str(i)][metric] for i in range(k)] == pytest.approx(expected[metric], abs=1e-6)
    assert ours["confusion_matrix"] == expected["confusion_matrix"]
    assert [ours["per_class"][str(i)]["support"] for i in range(k)] == torch.bincount(labels, minlength=k).tolist()


def test_scoring_imports_no_scipy():
    """The reason these are ours: torchmetrics' import pulls scipy.signal and scipy.stats into every run."""
    import subprocess
    import sys

    check = ("import torch, sys\nfrom tlscale.eval.metrics import classification_metrics\n"
             "classification_metrics(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), ['a', 'b'])\n"
             "print(sorted(m for m in ('torchmetrics', 'scipy.signal', 'scipy.stats') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reliability_bins_are_the_bins_of_the_ece(seed, tmp_path):
    """The reliability diagram draws the bins the ECE is computed on: their weighted gaps add up to it."""
    from tlscale.eval.metrics import expected_calibration_error
    from tlscale.eval.reports import plot_reliability, reliability_bins

    generator = torch.Generator().manual_seed(seed)
    confidence = torch.rand(500, generator=generator, dtype=torch.float64) * 0.5 + 0.5
    confidence[:7] = torch.tensor([0.5, 0.6, 2 / 3, 0.8, 0.9, 1.0, 1.0], dtype=torch.float64)  # on and at the edges
    correct = torch.rand(500, generator=generator, dtype=torch.float64) < confidence ** 2
    correct[5:7] = True  # (sure and right, as a model's 1.0 nearly always is: see reliability_bins)
    bins = reliability_bins(confidence, correct, 15)
    assert sum(b["count"] for b in bins) == 500 and bins[-1]["count"] >= 2  # a confidence of 1 is in the last bin
    gaps = sum(abs(b["accuracy"] - b["confidence"]) * b["count"] for b in bins if b["count"]) / 500
    assert gaps == pytest.approx(expected_calibration_error(confidence, correct, 15), abs=1e-9)
    assert all(b["low"] <= b["confidence"] <= b["high"] for b in bins if b["count"])
    plot_reliability(tmp_path / "reliability.png", bins, gaps, "random")
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
