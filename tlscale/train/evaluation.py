"""Evaluation of a classifier during and after training (files only for the final one)."""
from __future__ import annotations

import torch

from tlscale.eval import classification_metrics, plot_confusion_matrix, predict_probabilities, write_predictions


def evaluate_and_report(model, eval_set, data, spec, run, device, pad_id, feature_cache=None,
                        write_files: bool = False) -> dict:
    probs = predict_probabilities(model, eval_set, spec.eval.batch_size, pad_id, device, feature_cache)
    metrics = classification_metrics(probs, torch.tensor(eval_set.labels), data.label_names,
                                     spec.eval.calibration_bins)
    if write_files:
        if spec.eval.predictions:
            write_predictions(run.path / "predictions.jsonl", data.eval.texts, probs, data.label_names,
                              eval_set.labels, data.eval.where)
        if spec.eval.confusion_matrix:
            plot_confusion_matrix(run.path / "confusion_matrix.png", metrics["confusion_matrix"], data.label_names,
                                  f"{spec.strategy.name}: accuracy {metrics['accuracy']:.3f}")
    return metrics
