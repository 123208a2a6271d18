"""The cheaper CPU dropout masks: torch's dropout in distribution, on the seed, for every element."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tlscale.models.dropout import CPUDropout, expressible_threshold, use_cpu_dropout


def test_masks_drop_p_of_every_lane_and_keep_the_expectation():
    torch.manual_seed(0)
    dropout = CPUDropout(0.1).train()
    out = dropout(torch.ones(4_000_000))
    dropped = (out == 0).float()
    assert dropped.mean().item() == pytest.approx(0.1, abs=0.0008)  # sd of the estimate: 1.5e-4
    # each of a 64-bit word's four 16-bit lanes is its own draw (a generator leaving a bit unset would show here)
    for lane in range(4):
        assert dropped[lane::4].mean().item() == pytest.approx(0.1, abs=0.0016)
    assert out.mean().item() == pytest.approx(1.0, abs=0.003)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / (1 - 6554 / 65536))]


def test_masks_follow_the_seed_and_the_gradient_goes_through_the_kept_elements():
    x = torch.randn(8, 33, 40, requires_grad=True)
    torch.manual_seed(3)
    first = CPUDropout(0.2).train()(x)
    torch.manual_seed(3)
    again = CPUDropout(0.2).train()(x)
    torch.manual_seed(4)
    other = CPUDropout(0.2).train()(x)
    assert torch.equal(first, again) and not torch.equal(first, other)
    first.sum().backward()
    noise = first.detach() / x.detach()
    assert torch.allclose(x.grad, noise)


def test_bf16_stays_bf16_and_evaluation_changes_nothing():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert CPUDropout(0.1).train()(x).dtype == torch.bfloat16
    assert torch.equal(CPUDropout(0.1).eval()(x), x)


@pytest.mark.parametrize("p, threshold", [(0.1, 6554), (0.5, 32768), (0.01, 655), (1e-6, None), (0.0, None),
                                          (1.0, None)])
def test_a_p_that_16_bits_cannot_express_keeps_torch_own_masks(p, threshold):
    assert expressible_threshold(p) == threshold
    if threshold is None and 0 < p < 1:
        x = torch.randn(1000)
        torch.manual_seed(1)
        expected = nn.functional.dropout(x, p, training=True)
        torch.manual_seed(1)
        assert torch.equal(CPUDropout(p).train()(x), expected)


def test_only_plain_dropout_layers_change_and_the_saved_state_does_not():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100))
    plain = sum(type(m) is nn.Dropout for m in model.modules())
    keys = set(model.state_dict())
    assert use_cpu_dropout(model) == plain > 0
    assert all(isinstance(m, CPUDropout) for m in model.modules() if isinstance(m, nn.Dropout))
    assert set(model.state_dict()) == keys and use_cpu_dropout(model) == 0
