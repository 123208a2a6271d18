"""The memory planner: ZeRO-paper arithmetic, cross-checked against DeepSpeed's own estimators."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT
from tlscale.cli import app
from tlscale.distributed.planner import OPTIONS, activations, model_size, model_states, parse_bytes, plan, recommend
from tlscale.spec import load_spec

BY_NAME = {o.name: o for o in OPTIONS}


@pytest.fixture(scope="module")
def minilm():
    return model_size(load_spec(ROOT / "configs" / "sst2-minilm-full.yaml"))


def test_counts_match_the_trained_model(minilm):
    assert minilm.total == minilm.trainable == 22_566_146  # what training reports for this spec
    assert minilm.largest_layer == 30522 * 384  # word embeddings
    assert minilm.layers == minilm.trainable_layers == 6


def test_zero_paper_formulas(minilm):
    p, n = minilm.total, 4
    stage = {name: sum(model_states(minilm, BY_NAME[name], n)[:3]) for name in ("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3")}
    assert stage["DDP"] == pytest.approx(16 * p)
    assert stage["ZeRO-1"] == pytest.approx(4 * p + 12 * p / n)
    assert stage["ZeRO-2"] == pytest.approx(2 * p + 14 * p / n)
    assert stage["ZeRO-3"] == pytest.approx(16 * p / n + 2 * minilm.largest_layer)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_cross_check_with_deepspeed_estimators(minilm, n):
    """DeepSpeed counts 18 bytes/param (it adds an fp32 gradient partition) and a 4-byte largest-layer
    buffer; everything else must agree exactly, parameter counts included."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, big = minilm.total, minilm.largest_layer
    ours = {o.name: model_states(minilm, o, n) for o in OPTIONS}
    device = {name: sum(v[:3]) for name, v in ours.items()}

    _, ds = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=n, cpu_offload=False)
    assert ds - device["ZeRO-2"] == pytest.approx(4 * p / n, abs=2)
    _, ds = estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=n, cpu_offload=True)
    assert ds == pytest.approx(device["ZeRO-2 + offload optimizer"], abs=2)
    _, ds, _ = estimate_zero3_model_states_mem_needs(p, big, num_gpus_per_node=n, cpu_offload=False,
                                                     cpu_offload_params=False)
    assert ds - device["ZeRO-3"] == pytest.approx(2 * big + 2 * p / n, abs=2)
    _, ds, _ = estimate_zero3_model_states_mem_needs(p, big, num_gpus_per_node=n, cpu_offload=True,
                                                     cpu_offload_params=False)
    assert ds - device["ZeRO-3 + offload optimizer"] == pytest.approx(2 * big, abs=2)
    _, ds, _ = estimate_zero3_model_states_mem_needs(p, big, num_gpus_per_node=n, cpu_offload=True,
                                                     cpu_offload_params=True)
    assert ds - device["ZeRO-3 + offload optimizer+params"] == pytest.approx(2 * big, abs=2)


def test_frozen_parameters_cost_only_their_weights():
    spec = load_spec(ROOT / "configs" / "sst2-minilm-feature-extraction.yaml")
    size = model_size(spec)
    assert size.trainable == 384 * 2 + 2 and size.trainable_layers == 0
    params, grads, optimizer, _ = model_states(size, BY_NAME["DDP"], 1)
    assert params == pytest.approx(2 * size.total) and grads == pytest.approx(2 * size.trainable)
    assert activations(size, 16, 128) == 0
    params4, *_ = model_states(size, BY_NAME["DDP"], 1, frozen_bits=4)  # only frozen Linear weights quantize
    frozen = size.total - size.trainable
    assert 0 < size.frozen_linear < frozen
    assert params4 == pytest.approx(2 * size.trainable + 0.5 * size.frozen_linear + 2 * (frozen - size.frozen_linear))


def test_recommends_the_cheapest_that_fits(minilm):
    estimates = plan(minilm, 2, 8, 128)
    ddp, zero1 = estimates[0].device_total, estimates[1].device_total
    assert recommend(estimates, ddp * 1.01).option.name == "DDP"
    assert recommend(estimates, (ddp + zero1) / 2).option.name == "ZeRO-1"
    assert recommend(estimates, 1) is None


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * 1024**3 and parse_bytes("24GB") == 24e9 and parse_bytes("512MiB") == 512 * 1024**2


def test_plan_command():
    result = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "sst2-minilm-full.yaml"), "--gpus", "2",
                                      "--gpu-memory", "0.4GiB", "training.mixed_precision=bf16"])
    assert result.exit_code == 0, result.output
    assert "ZeRO-3 + offload optimizer+params" in result.output and "Recommended: ZeRO-1" in result.output
    result = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "sst2-minilm-full.yaml"), "--gpu-memory", "1MiB"])
    assert result.exit_code == 0 and "Nothing fits" in result.output
    result = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "sst2-minilm-full.yaml"), "--gpu-memory", "lots"])
    assert result.exit_code == 2 and "--gpu-memory" in result.output


def test_qlora_estimate_matches_the_loaded_4bit_model(tmp_path):
    """The planner's weight bytes for a 4-bit base + adapters agree with what bitsandbytes really holds."""
    pytest.importorskip("bitsandbytes")
    from tests.conftest import tiny_spec
    from tlscale.distributed.planner import frozen_weight_bits
    from tlscale.models import build_classifier
    from tlscale.models.quantization import footprint_bytes
    from tlscale.spec import spec_from_dict
    from tlscale.strategies import build_strategy, count_parameters

    spec = spec_from_dict(tiny_spec(tmp_path / "o", tmp_path / "t.tsv", model={"name_or_path": "tiny:llama"},
                                    strategy={"name": "qlora", "r": 4}))
    size = model_size(spec)
    strategy = build_strategy(spec.strategy)
    model = strategy.apply(build_classifier(spec.model, ["negative", "positive"], strategy.load_options()))
    assert (size.trainable, size.total) == count_parameters(model)
    bits = frozen_weight_bits(spec.strategy)
    weights = model_states(size, BY_NAME["DDP"], 1, mixed_precision=False, frozen_bits=bits)[0]
    assert weights == pytest.approx(footprint_bytes(model), rel=0.02)
    names = [e.option.name for e in plan(size, 2, 8, 48, frozen_bits=bits)]
    assert "ZeRO-2" in names and not any("ZeRO-3" in name for name in names)  # QLoRA + ZeRO-3 is refused
