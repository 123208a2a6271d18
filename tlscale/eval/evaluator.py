"""Run a classifier over encoded data; shared by training, `tlscale eval` and `predict`."""
from __future__ import annotations

import torch

from tlscale.data.batching import Encoded, collate, sequential_batches


@torch.no_grad()
def predict_probabilities(model, data: Encoded, batch_size: int, pad_id: int, device,
                          feature_cache=None) -> torch.Tensor:
    """Probabilities in the original example order."""
    was_training = model.training
    model.eval()
    lengths = [len(ids) for ids in data.input_ids]
    probs = torch.empty((len(data), model.config.num_labels))
    for indices in sequential_batches(lengths, batch_size):
        batch = collate(data, indices, pad_id)
        index = batch.pop("index")
        batch.pop("labels", None)
        batch = {k: v.to(device) for k, v in batch.items()}
        if feature_cache is not None:
            batch = feature_cache.inputs(model, batch, index)
        logits = model(**batch).logits
        probs[index] = torch.softmax(logits.float(), dim=-1).cpu()
    model.train(was_training)
    return probs
