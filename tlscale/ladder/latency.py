"""`python -m tlscale.ladder.latency MODEL_DIR CELL_SPEC`: seconds a saved classifier takes to label the spec's
evaluation texts (after one warm-up batch; the fastest of three passes), as JSON on stdout. Measured apart from training, in a process
of its own, because a run's final evaluation may reuse cached features (feature extraction) and would
flatter the method."""
from __future__ import annotations

import json
import sys
import time

REPEATS = 3


def predict_seconds(model_dir: str, spec_file: str) -> dict:
    import torch

    from tlscale.data import build_classification_data, tokenize
    from tlscale.eval import predict_probabilities
    from tlscale.models import load_trained_classifier
    from tlscale.spec import load_spec

    spec = load_spec(spec_file)
    model, tokenizer, _ = load_trained_classifier(model_dir)
    data = build_classification_data(spec.data, spec.seed)
    encoded = tokenize(data.eval, tokenizer, spec.model.max_length)
    batch = spec.eval.batch_size
    warm = tokenize(data.eval.subset(list(range(min(batch, len(data.eval))))), tokenizer, spec.model.max_length)
    predict_probabilities(model, warm, batch, tokenizer.pad_token_id, torch.device("cpu"))
    times = []
    for _ in range(REPEATS):  # the fastest pass: the least disturbed by whatever else the machine runs
        started = time.perf_counter()
        predict_probabilities(model, encoded, batch, tokenizer.pad_token_id, torch.device("cpu"))
        times.append(time.perf_counter() - started)
    return {"seconds": round(min(times), 4), "examples": len(data.eval), "batch_size": batch}


if __name__ == "__main__":
    print(json.dumps(predict_seconds(sys.argv[1], sys.argv[2])))
