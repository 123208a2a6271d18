"""Contextual calibration (Zhao et al., 2021, "Calibrate before use"): a prompt's bias towards some label
words shows on inputs with no content ("N/A", "", "[MASK]"). Their mean label distribution p_cf is
divided out, q = normalize(p / p_cf), so a content-free input comes out uniform."""
from __future__ import annotations

import torch


def content_free_distribution(label_log_scores: torch.Tensor) -> torch.Tensor:
    """[content-free inputs, labels] log-scores -> their mean label distribution."""
    return torch.softmax(label_log_scores.float(), dim=-1).mean(dim=0)


def calibrate(label_log_scores: torch.Tensor, p_cf: torch.Tensor) -> torch.Tensor:
    """[examples, labels] log-scores -> calibrated probabilities (W = diag(p_cf)^-1, b = 0)."""
    return torch.softmax(torch.log_softmax(label_log_scores.float(), dim=-1) - p_cf.clamp_min(1e-12).log(), dim=-1)
