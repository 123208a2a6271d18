"""QLoRA on CPU: 4-bit / 8-bit bases, the repacking trap, dequantized merges, adapter round trips."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_spec
from tlscale.errors import ConfigError
from tlscale.models import build_classifier
from tlscale.spec import spec_from_dict
from tlscale.spec.schema import ModelSpec
from tlscale.strategies.base import strategy_spec
from tlscale.strategies import build_strategy, count_parameters
from tlscale.models.saving import merged_copy

pytest.importorskip("bitsandbytes")


def qlora_model(arch: str, **options):
    strategy = build_strategy(strategy_spec(name="qlora", r=4, **options))
    base = build_classifier(ModelSpec(name_or_path=f"tiny:{arch}"), ["neg", "pos"], strategy.load_options())
    return strategy.apply(base)


def fixed_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (8, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (8,), generator=generator)}


@torch.no_grad()
def eval_loss(model, batch) -> float:
    model.eval()
    return model(**batch).loss.item()


@pytest.mark.parametrize("arch,options", [("bert", {}), ("gpt2", {}), ("llama", {}), ("llama", {"quant_type": "fp4"}),
                                          ("bert", {"bits": 8})])
def test_eval_then_train_then_merge_matches_the_adapter_model(arch, options):
    """The CPU trap: a no-grad eval forward before training used to repack the 4-bit weights in place;
    training then diverged and the merge was wrong (or crashed). Evaluate first, on purpose."""
    torch.manual_seed(0)
    model = qlora_model(arch, **options)
    batch = fixed_batch()
    before = eval_loss(model, batch)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(15):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = eval_loss(model, batch)
    assert after < before - 0.05, (before, after)
    merged = merged_copy(model)
    assert not any(type(p).__name__ in ("Params4bit", "Int8Params") for p in merged.parameters())
    assert eval_loss(merged, batch) == pytest.approx(after, rel=1e-4, abs=1e-5)


def test_4bit_base_counts_and_footprint():
    from tlscale.models.quantization import footprint_bytes, footprint_unquantized_bytes

    plain = build_classifier(ModelSpec(name_or_path="tiny:llama"), ["neg", "pos"])
    strategy = build_strategy(strategy_spec(name="qlora"))
    quantized = build_classifier(ModelSpec(name_or_path="tiny:llama"), ["neg", "pos"], strategy.load_options())
    assert count_parameters(quantized)[1] == count_parameters(plain)[1]  # packed weights count as what they hold
    assert footprint_unquantized_bytes(quantized) == footprint_bytes(plain)
    linear = sum(m.weight.numel() for m in plain.backbone.modules() if isinstance(m, torch.nn.Linear))
    saved = footprint_bytes(plain) - footprint_bytes(quantized)
    assert saved > 0.8 * linear * 4 * (1 - 0.5 / 4)  # ~4.5 of 32 bits kept per linear weight


def test_qlora_options_belong_to_qlora(tmp_path):
    with pytest.raises(ConfigError, match="bits only applies to strategy 'qlora', not 'lora'"):
        spec_from_dict(tiny_spec(tmp_path / "o", tmp_path / "t.tsv", strategy={"name": "lora", "bits": 4}))
    with pytest.raises(ConfigError, match="quant_type only apply to 4-bit loading, found bits=8"):
        spec_from_dict(tiny_spec(tmp_path / "o", tmp_path / "t.tsv",
                                 strategy={"name": "qlora", "bits": 8, "quant_type": "nf4"}))


def test_qlora_run_writes_adapter_and_dequantized_merge(tmp_path, small_sst2):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tlscale import train

    raw = tiny_spec(tmp_path / "run", *small_sst2, model={"name_or_path": "tiny:gpt2", "max_length": 48},
                    strategy={"name": "qlora", "r": 4}, training={"epochs": 3, "lr": 3e-3, "log_every_steps": 5})
    result = train(spec_from_dict(raw), show_progress=False)
    metrics = result.metrics
    assert metrics["saved_model_verified"] is True  # merged model reloaded: same loss as adapter on 4-bit base
    assert metrics["memory"]["quantized"] and metrics["memory"]["ratio_to_fp32"] < 1
    assert metrics["trainable_params"] < 0.01 * metrics["total_params"]
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    # plain peft on a freshly quantized base gives the same predictions as the merged model
    strategy = build_strategy(strategy_spec(name="qlora"))
    base = build_classifier(ModelSpec(name_or_path="tiny:gpt2", max_length=48), ["negative", "positive"],
                            strategy.load_options())
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "run" / "model-adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True)
    batch = fixed_batch(1)
    batch.pop("labels")
    with torch.no_grad():
        assert torch.allclose(with_adapter(**batch).logits, merged.eval()(**batch).logits, atol=1e-4)


def test_bitsandbytes_without_a_working_backend_fails_validation(monkeypatch):
    import bitsandbytes.functional

    from tlscale.errors import DependencyError

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    with pytest.raises(DependencyError, match="'qlora' needs a working bitsandbytes backend.*no kernel image"):
        build_strategy(strategy_spec(name="qlora")).load_options()
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(DependencyError, match=r"pip install 'tlscale\[qlora\]'"):
        build_strategy(strategy_spec(name="qlora")).load_options()


def test_export_merge_reports_the_eval_difference(tmp_path, small_sst2):
    from tests.conftest import run_cli, write_spec
    from tests.unit.cli_checks import expect_error

    raw = tiny_spec(tmp_path / "run", *small_sst2, model={"name_or_path": "tiny:llama", "max_length": 48},
                    strategy={"name": "qlora", "r": 4}, training={"epochs": 1, "lr": 3e-3})
    spec = write_spec(tmp_path / "q.yaml", raw)
    assert run_cli("train", str(spec), "--no-progress").returncode == 0
    result = run_cli("export", str(tmp_path / "run"), "--merge", "--output", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predictions changed" in result.stdout
    report = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert report["eval_merged"]["num_examples"] == 64
    assert report["difference"]["max_abs_probability"] < 1e-4 and report["difference"]["predictions_changed"] == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    bf16 = run_cli("export", str(tmp_path / "run"), "--merge", "--output", str(tmp_path / "bf16"), "--dtype", "bfloat16")
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    assert json.loads((tmp_path / "bf16" / "export.json").read_text())["dtype"] == "bfloat16"
    for args, message in [((str(tmp_path / "run"), "--output", str(tmp_path / "x")), "pass --merge"),
                          ((str(tmp_path / "run"), "--merge", "--output", str(tmp_path / "merged")), "exists"),
                          ((str(small_sst2[0].parent), "--merge", "--output", str(tmp_path / "y")), "neither a PEFT adapter folder"),
                          ((str(tmp_path / "run"), "--merge", "--output", str(tmp_path / "z"), "--dtype", "fp8"),
                           "--dtype: expected one of")]:
        expect_error(["export", *args], message)  # in this process: the refusals need no model loaded
