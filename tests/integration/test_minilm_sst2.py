"""Transfer quality on real data: the shipped SST-2 configs with the real MiniLM encoder, evaluated on the 872
dev sentences.

Full, LoRA and QLoRA train on the configs' 8,000 seeded rows (the PEFT floor is relative to full, and at
4,000 rows QLoRA measured 0.8349 against full's 0.8544: 1.95 points, one dev sentence from the floor).
Feature extraction, partial and gradual unfreezing train on 4,000 of those rows (`data.limit=4000`), where
their floors still hold with room: measured 0.7947, 0.8303 and 0.8028 (8,000 rows: 0.7936, 0.8303, 0.8314).
Epochs: 1, and 10 for feature_extraction (epochs 2..10 reuse cached features). QLoRA trains under bf16 autocast
here (this CPU has AVX512-BF16; the shipped config trains in fp32): 0.8406 in 122 s against fp32's 0.8417 in 144 s
(one worker thread each, two runs side by side). Full and LoRA stay fp32: in bf16 full rose to 0.8544 and LoRA
fell to 0.8349, 1.95 points apart, too close to the 2-point floor to be a stable test.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow
RESULTS: dict[str, dict] = {}
OVERRIDES = {"qlora": ["training.mixed_precision=bf16"]}
ROWS = {"full": 8000, "lora": 8000, "qlora": 8000, "feature-extraction": 4000, "partial": 4000,
        "gradual-unfreeze": 4000}


def train_config(name: str, tmp_path) -> dict:
    if name in RESULTS:
        return RESULTS[name]
    out = tmp_path / name
    result = run_cli("train", str(ROOT / "configs" / f"sst2-minilm-{name}.yaml"), "--no-progress", f"output_dir={out}",
                     f"data.limit={ROWS[name]}", *OVERRIDES.get(name, []))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == ROWS[name] and metrics["eval_examples"] == 872
    RESULTS[name] = metrics
    print(f"{name}: accuracy {metrics['eval']['accuracy']:.4f}, {metrics['trainable_params']:,} trainable, "
          f"{metrics['train_runtime_s']} s")
    return metrics


def test_full_fine_tuning(tmp_path):
    metrics = train_config("full", tmp_path)
    assert metrics["eval"]["accuracy"] >= 0.84
    assert metrics["trainable_params"] == metrics["total_params"]


def test_feature_extraction(tmp_path):
    metrics = train_config("feature-extraction", tmp_path)
    assert metrics["eval"]["accuracy"] >= 0.78
    assert metrics["trainable_params"] == 384 * 2 + 2
    assert len(metrics["epoch_times_s"]) == 10


@pytest.mark.parametrize("name", ["partial", "gradual-unfreeze"])
def test_at_least_feature_extraction_level(name, tmp_path):
    baseline = train_config("feature-extraction", tmp_path)["eval"]["accuracy"]
    metrics = train_config(name, tmp_path)
    assert metrics["eval"]["accuracy"] >= max(0.78, baseline)
    assert metrics["trainable_params"] < metrics["total_params"] or name == "gradual-unfreeze"


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_parameter_efficient_within_two_points_of_full(name, tmp_path):
    """The PEFT issue's bar: within 2 points of full fine-tuning with under 5% of the parameters trainable."""
    full = train_config("full", tmp_path)["eval"]["accuracy"]
    metrics = train_config(name, tmp_path)
    assert metrics["eval"]["accuracy"] >= full - 0.02, (metrics["eval"]["accuracy"], full)
    assert metrics["trainable_params"] < 0.05 * metrics["total_params"]
    assert metrics["saved_model_verified"] is True
    if name == "qlora":  # 4-bit Linear weights; the 30k x 384 embeddings stay fp32
        assert metrics["memory"]["quantized"] and metrics["memory"]["ratio_to_fp32"] < 0.65
