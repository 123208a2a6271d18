"""A few-shot run as a distillation teacher (self-training): its method, fitted again on the run's seed's
labelled examples as `tlscale fewshot --label` fits it, labels a student's transfer texts."""
from __future__ import annotations

from pathlib import Path

import torch

from tlscale.fewshot.methods import METHODS
from tlscale.tasks.distillation import fewshot_spec


def label_transfer_texts(folder: Path, examples, spec, want_features: bool) -> dict:
    teacher_spec = fewshot_spec(folder)
    method = METHODS.get(teacher_spec.fewshot.method, field="fewshot.method")(teacher_spec)
    probs = method.label_probabilities(examples, teacher_spec.fewshot.seeds[0])
    return {"log_probs": torch.log(torch.as_tensor(probs, dtype=torch.float).clamp_min(1e-12)),
            "label_names": list(method.label_names)}
