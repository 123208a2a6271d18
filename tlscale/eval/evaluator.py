"""Run a classifier over encoded data; shared by training, `tlscale eval` and `predict`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tlscale.data.batching import Encoded, collate, lengths, no_grad, sequential_batches

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


@no_grad
def score_batches(model, data: Encoded, batches: list[list[int]], pad_id: int, device,
                  feature_cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(example indices, probabilities) for the given batches, on the CPU."""
    import torch

    was_training = model.training
    model.eval()
    indices, probs = [], []
    for batch_indices in batches:
        batch = collate(data, batch_indices, pad_id)
        index = batch.pop("index")
        batch.pop("labels", None)
        batch = {k: v.to(device) for k, v in batch.items()}
        if feature_cache is not None:
            batch = feature_cache.inputs(model, batch, index)
        indices.append(index)
        probs.append(torch.softmax(model(**batch).logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(indices), torch.cat(probs)


def predict_probabilities(model, data: Encoded, batch_size: int, pad_id: int, device,
                          feature_cache=None) -> torch.Tensor:
    """Probabilities in the original example order (batches sorted by length: less padding)."""
    import torch

    batches = sequential_batches(lengths(data.input_ids), batch_size)
    index, probs = score_batches(model, data, batches, pad_id, device, feature_cache)
    ordered = torch.empty_like(probs)
    ordered[index] = probs
    return ordered
