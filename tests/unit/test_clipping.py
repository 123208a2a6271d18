"""Gradient clipping folded into the fused AdamW kernel gives torch's clip_grad_norm_ + step."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tlscale.training.loop import _clip_gradients

SIZES = [10.0, 0.01, 30.0, 0.01, 0.3]  # steps over the limit and under it: clipping changes Adam's moments


def _train(clip: str, fused: bool = True) -> tuple[torch.nn.Module, list[str]]:
    """clip: 'kernel' (ours), 'torch' (clip_grad_norm_ then step) or 'none'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    calls = []

    def accelerate_clip(parameters, max_norm):
        calls.append("accelerate")
        torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)

    session = SimpleNamespace(optimizer=SimpleNamespace(optimizer=optimizer), model=model,
                              accelerator=SimpleNamespace(scaler=None, clip_grad_norm_=accelerate_clip))
    generator = torch.Generator().manual_seed(1)
    for size in SIZES:
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator) * size
        if clip == "kernel":
            _clip_gradients(session, max_norm=1.0)
        elif clip == "torch":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, calls


@pytest.mark.parametrize("torch_before_2_6", [False, True])  # no torch.nn.utils.get_total_norm there
def test_the_fused_clip_trains_like_clip_grad_norm_then_step(monkeypatch, torch_before_2_6):
    if torch_before_2_6:
        monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    ours, calls = _train("kernel")
    monkeypatch.undo()
    theirs, _ = _train("torch")
    unclipped, _ = _train("none")
    assert calls == []  # the kernel did it
    for a, b, c in zip(ours.parameters(), theirs.parameters(), unclipped.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - c).abs().max() > 1e-3  # the clip mattered


def test_an_unfused_optimizer_is_clipped_by_accelerate():
    _, calls = _train("kernel", fused=False)
    assert calls == ["accelerate"] * len(SIZES)
