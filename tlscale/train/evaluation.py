"""Evaluation of a classifier during and after training (files only for the final one).

With several processes each rank scores a share of the batches; (index, probabilities) rows are
gathered and de-duplicated by example index, so no example is dropped or counted twice.
"""
from __future__ import annotations

import torch

from tlscale.data.batching import sequential_batches
from tlscale.eval import classification_metrics, plot_confusion_matrix, write_predictions
from tlscale.eval.evaluator import score_batches


def gathered_probabilities(accelerator, model, data, batch_size: int, pad_id: int, cache=None) -> torch.Tensor:
    batches = sequential_batches([len(ids) for ids in data.input_ids], batch_size)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)  # every rank runs as many forwards (ZeRO-3 gathers need all ranks)
    mine += [batches[0]] * (rounds - len(mine))
    local_index, local_probs = score_batches(model, data, mine, pad_id, accelerator.device, cache)
    if world > 1:
        local_index = accelerator.gather(accelerator.pad_across_processes(local_index.to(accelerator.device),
                                                                          pad_index=-1)).cpu()
        local_probs = accelerator.gather(accelerator.pad_across_processes(local_probs.to(accelerator.device))).cpu()
    result = torch.full((len(data), local_probs.shape[1]), float("nan"))
    keep = local_index >= 0
    result[local_index[keep]] = local_probs[keep]
    if torch.isnan(result).any():
        raise RuntimeError("evaluation lost examples while gathering across processes")
    return result


def evaluate_and_report(accelerator, model, eval_set, data, spec, run, pad_id, feature_cache=None,
                        write_files: bool = False) -> dict:
    probs = gathered_probabilities(accelerator, model, eval_set, spec.eval.batch_size, pad_id, feature_cache)
    metrics = classification_metrics(probs, torch.tensor(eval_set.labels), data.label_names,
                                     spec.eval.calibration_bins)
    if write_files and accelerator.is_main_process:
        if spec.eval.predictions:
            write_predictions(run.path / "predictions.jsonl", data.eval.texts, probs, data.label_names,
                              eval_set.labels, data.eval.where)
        if spec.eval.confusion_matrix:
            plot_confusion_matrix(run.path / "confusion_matrix.png", metrics["confusion_matrix"], data.label_names,
                                  f"{spec.strategy.name}: accuracy {metrics['accuracy']:.3f}")
    return metrics
