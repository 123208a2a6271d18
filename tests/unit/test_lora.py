"""LoRA as a strategy: what trains, per-architecture targets, adapter + merged outputs."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_spec, write_spec
from tlscale.errors import ConfigError
from tlscale.models import build_classifier
from tlscale.spec import spec_from_dict
from tlscale.spec.schema import ModelSpec
from tlscale.strategies.base import strategy_spec
from tlscale.strategies import build_strategy, count_parameters


@pytest.mark.parametrize("arch,targets", [("bert", "query"), ("gpt2", "c_attn")])
def test_lora_trains_adapters_and_the_head_only(arch, targets):
    model = build_classifier(ModelSpec(name_or_path=f"tiny:{arch}"), ["neg", "pos"])
    total_before = count_parameters(model)[1]
    peft_model = build_strategy(strategy_spec(name="lora", r=4)).apply(model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier.modules_to_save" in n for n in names)
    assert any(targets in n for n in names)
    trainable, total = count_parameters(peft_model)
    assert trainable < 0.02 * total_before
    assert model.config.classifier_pooling == ("last" if arch == "gpt2" else "cls")


def test_unknown_target_module_is_a_clear_error():
    model = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])
    with pytest.raises(ConfigError, match="strategy.target_modules: \\['q_proj'\\] are not modules"):
        build_strategy(strategy_spec(name="lora", target_modules=["q_proj"])).apply(model)


def test_lora_options_belong_to_lora(tmp_path):
    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv", None, strategy={"name": "full", "r": 8})
    with pytest.raises(ConfigError, match="r only applies to strategies 'lora' and 'qlora'"):
        spec_from_dict(raw)


def test_lora_run_writes_adapter_and_merged_model(tmp_path, small_sst2):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tlscale import train

    raw = tiny_spec(tmp_path / "run", *small_sst2, strategy={"name": "lora", "r": 4, "alpha": 8},
                    training={"epochs": 1, "lr": 5e-3, "eval_every_steps": 10})
    result = train(spec_from_dict(raw), show_progress=False)
    assert result.metrics["saved_model_verified"] is True
    assert result.metrics["trainable_params"] < result.metrics["total_params"] / 50
    adapter = tmp_path / "run" / "model-adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True)
    base = build_classifier(ModelSpec(name_or_path="tiny:bert", max_length=48), ["negative", "positive"])
    with_adapter = PeftModel.from_pretrained(base, adapter)  # plain peft on top of the base model
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones_like(ids)
    merged.eval(), with_adapter.eval()
    assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits,
                          with_adapter(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


def test_bfloat16_base_halves_the_frozen_weights_and_trains_float32(tmp_path, small_sst2):
    from tlscale import train

    strategy = build_strategy(strategy_spec(name="lora", r=4, base_dtype="bfloat16"))
    model = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"], strategy.load_options())
    peft_model = strategy.apply(model)
    frozen = {p.dtype for n, p in peft_model.named_parameters() if not p.requires_grad and "backbone" in n}
    trained = {p.dtype for p in peft_model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}  # adapters and the new head

    raw = tiny_spec(tmp_path / "run", *small_sst2, strategy={"name": "lora", "r": 4, "base_dtype": "bfloat16"},
                    training={"epochs": 1, "lr": 5e-3, "mixed_precision": "bf16"})
    result = train(spec_from_dict(raw), show_progress=False)
    assert result.metrics["saved_model_verified"] is True


def test_half_precision_base_needs_autocast_and_is_not_for_qlora(tmp_path):
    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv", None, strategy={"name": "lora", "base_dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="strategy.base_dtype 'bfloat16' needs training.mixed_precision 'bf16'"):
        spec_from_dict(raw)
    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv", None, strategy={"name": "qlora", "base_dtype": "bfloat16"},
                    training={"mixed_precision": "bf16"})
    with pytest.raises(ConfigError, match="base_dtype is for strategy 'lora'"):
        spec_from_dict(raw)
