"""The cheaper CPU dropout masks: torch's dropout in distribution, on the seed, for every element."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tlscale.models import dropout as cpu_dropout
from tlscale.models.dropout import CPUDropout, attention_with_cpu_dropout, expressible_threshold, use_cpu_dropout


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


def test_bf16_stays_bf16_is_scaled_as_torch_scales_it_and_evaluation_changes_nothing():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert CPUDropout(0.1).train()(x).dtype == torch.bfloat16
    assert torch.equal(CPUDropout(0.1).eval()(x), x)
    # kept elements scaled as torch's CPU dropout scales them in bf16: by 1/(1-p) rounded to bf16 (1.109375)
    x = torch.rand(1_000_000).add_(1).bfloat16()

    def mean_scale(out):
        kept = out != 0
        return (out[kept].float() / x[kept].float()).mean().item()

    ours, theirs = mean_scale(CPUDropout(0.1).train()(x)), mean_scale(nn.functional.dropout(x, 0.1, training=True))
    assert ours == pytest.approx(theirs, abs=2e-4)


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
    assert use_cpu_dropout(model) == (plain, 1) and plain > 0
    assert all(isinstance(m, CPUDropout) for m in model.modules() if isinstance(m, nn.Dropout))
    assert set(model.state_dict()) == keys and use_cpu_dropout(model) == (0, 0)


class Attention(nn.Module):
    def __init__(self, is_causal: bool, groups: int = 1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups


def padding_mask(dtype):
    keep = torch.ones(3, 1, 5, 5, dtype=torch.bool)
    keep[0, ..., 3:] = False  # the first row's last two keys are padding
    keep[1] = torch.ones(5, 5, dtype=torch.bool).tril()
    return keep if dtype == torch.bool else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(dtype).min)


@pytest.mark.parametrize("case", ["bool mask", "float mask", "causal, no mask", "causal, grouped keys", "bf16"])
def test_attention_is_sdpa_attention_with_the_dropped_probabilities_rescaled(case, monkeypatch):
    """With every probability kept, the function is transformers' SDPA attention scaled by 1/(1-p): the masks,
    causality, grouped key/value heads and scaling are handled as SDPA handles them."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    groups = 2 if "grouped" in case else 1
    query = torch.randn(3, 4, 5, 8, dtype=dtype)
    key, value = (torch.randn(3, 4 // groups, 5, 8, dtype=dtype) for _ in range(2))
    mask = None if "causal" in case else padding_mask(torch.float32 if case == "float mask" else torch.bool)
    module = Attention(is_causal="causal" in case, groups=groups).train()
    monkeypatch.setattr(cpu_dropout, "dropout_keep", lambda like, _: torch.ones(like.shape, dtype=torch.bool))
    ours, _ = attention_with_cpu_dropout(module, query, key, value, mask, dropout=0.1, scaling=0.3)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0, scaling=0.3)
    assert ours.shape == expected.shape == (3, 5, 4, 8) and ours.dtype == dtype
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(ours.float(), expected.float() / (1 - 6554 / 65536), atol=tolerance, rtol=tolerance)


def test_attention_drops_p_of_the_probabilities_and_evaluation_is_sdpa(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kept, dropout_keep = [], cpu_dropout.dropout_keep

    def recording(like, threshold):
        keep = dropout_keep(like, threshold)
        kept.append(keep.float().mean().item())
        return keep

    monkeypatch.setattr(cpu_dropout, "dropout_keep", recording)
    query, key, value = (torch.randn(8, 4, 64, 16, requires_grad=True) for _ in range(3))
    module = Attention(is_causal=False).train()
    torch.manual_seed(5)
    first, _ = attention_with_cpu_dropout(module, query, key, value, None, dropout=0.2)
    torch.manual_seed(5)
    again, _ = attention_with_cpu_dropout(module, query, key, value, None, dropout=0.2)
    assert torch.equal(first, again) and kept[0] == pytest.approx(0.8, abs=0.005)  # 131,072 draws: sd 0.0011
    first.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (query, key, value))
    module.eval()
    evaluated, _ = attention_with_cpu_dropout(module, query, key, value, None, dropout=0.0)
    assert torch.equal(evaluated, sdpa_attention_forward(module, query, key, value, None, dropout=0.0)[0])
    assert len(kept) == 2  # evaluation drew no mask


def tiny_causal_lm(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if kind == "llama":  # grouped key/value heads, no dropout layers
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                            attention_dropout=0.1))
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_lms_train_with_the_attention_masks_and_save_without_them(kind, tmp_path, monkeypatch):
    """The attention function runs in training only (a padded batch for GPT-2), follows the seed, and the saved
    model loads with transformers' own attention."""
    from transformers import AutoModelForCausalLM

    calls, dropout_keep = [], cpu_dropout.dropout_keep
    monkeypatch.setattr(cpu_dropout, "dropout_keep", lambda like, t: calls.append(like.shape) or dropout_keep(like, t))
    model = tiny_causal_lm(kind)
    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    if kind == "gpt2":
        mask[1, 6:] = 0
    reference = model.eval()(input_ids=ids, attention_mask=mask).logits
    layers, models = use_cpu_dropout(model)
    assert models == 1 and layers == (0 if kind == "llama" else 7)  # GPT-2: embeddings + 2 blocks x 3
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference) and not calls
    model.train()
    torch.manual_seed(1)
    first = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    torch.manual_seed(1)
    assert torch.equal(model(input_ids=ids, attention_mask=mask, labels=ids).loss, first)
    assert (2, 4, 9, 9) in calls  # batch x heads x queries x keys
    first.backward()
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
