"""The distributed spec section and the DeepSpeed JSON built from it."""
from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_spec
from tlscale.distributed.deepspeed_config import deepspeed_config
from tlscale.errors import ConfigError
from tlscale.spec import spec_from_dict


def make(tmp_path, distributed, **training):
    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv", tmp_path / "d.tsv",
                    training={"batch_size": 16, "grad_accum_steps": 2, **training}, distributed=distributed)
    return spec_from_dict(raw)


def test_derived_config(tmp_path):
    spec = make(tmp_path, {"backend": "deepspeed", "num_processes": 2, "zero_stage": 3,
                           "offload_optimizer": "cpu", "offload_params": "cpu"}, mixed_precision="bf16")
    config = deepspeed_config(spec)
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 2 and config["train_batch_size"] == 32
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def test_user_json_is_merged_and_auto_is_accepted(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 1.0,
                                "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7}}))
    spec = make(tmp_path, {"backend": "deepspeed", "num_processes": 2, "zero_stage": 2, "deepspeed_config": str(user)})
    config = deepspeed_config(spec)
    assert config["zero_optimization"]["overlap_comm"] is True
    assert config["zero_optimization"]["reduce_bucket_size"] == 5e7
    assert config["train_micro_batch_size_per_gpu"] == 8


def test_user_json_conflicts_are_errors_naming_both_sides(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"gradient_clipping": 0.5, "zero_optimization": {"stage": 3},
                                "optimizer": {"type": "Adam"}, "bf16": {"enabled": True}}))
    spec = make(tmp_path, {"backend": "deepspeed", "num_processes": 2, "zero_stage": 2, "deepspeed_config": str(user)})
    with pytest.raises(ConfigError) as info:
        deepspeed_config(spec)
    text = "\n".join(info.value.messages)
    assert "gradient_clipping" in text and "training.max_grad_norm" in text
    assert "zero_optimization.stage" in text and "distributed.zero_stage" in text
    assert "bf16.enabled" in text and "'optimizer' is set" in text
    assert len(info.value.messages) == 4


def test_user_json_unreadable(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 2,}}')
    spec = make(tmp_path, {"backend": "deepspeed", "num_processes": 2, "deepspeed_config": str(user)})
    with pytest.raises(ConfigError, match="ds.json:1: distributed.deepspeed_config is not valid JSON"):
        deepspeed_config(spec)


@pytest.mark.parametrize("distributed,training,fragment", [
    ({"backend": "none", "num_processes": 2}, {}, "needs backend 'ddp' or 'deepspeed'"),
    ({"backend": "ddp", "offload_optimizer": "cpu"}, {}, "offload_optimizer needs backend 'deepspeed'"),
    ({"backend": "deepspeed", "zero_stage": 2, "offload_params": "cpu"}, {}, "offload_params needs zero_stage 3"),
    ({"backend": "ddp", "num_processes": 3}, {}, "must divide evenly"),
    ({"backend": "deepspeed", "zero_stage": 2}, {"compile": True}, "training.compile is not supported under DeepSpeed"),
])
def test_incoherent_distributed_sections(tmp_path, distributed, training, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make(tmp_path, distributed, **training)


def test_gradual_unfreeze_rejected_under_deepspeed(tmp_path):
    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv", None, strategy={"name": "gradual_unfreeze"},
                    distributed={"backend": "deepspeed", "num_processes": 2})
    with pytest.raises(ConfigError, match="gradual_unfreeze' cannot run under DeepSpeed"):
        spec_from_dict(raw)


def test_validate_reports_deepspeed_json_conflicts(tmp_path, small_sst2):
    from typer.testing import CliRunner

    from tests.conftest import write_spec
    from tlscale.cli import app

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"gradient_accumulation_steps": 4}))
    raw = tiny_spec(tmp_path / "o", *small_sst2, distributed={"backend": "deepspeed", "num_processes": 2,
                                                              "deepspeed_config": str(user)})
    result = CliRunner().invoke(app, ["validate", str(write_spec(tmp_path / "s.yaml", raw))])
    assert result.exit_code == 2 and "gradient_accumulation_steps" in result.output
    assert "training.grad_accum_steps" in result.output and "Traceback" not in result.output


def test_every_runner_compiles_deepspeed_ops_into_one_folder(monkeypatch):
    """Local launches and Ray workers share one extensions folder (a stale lock in a second one once made a
    ZeRO-2 Ray run wait forever); TORCH_EXTENSIONS_DIR still wins when the user sets it."""
    from pathlib import Path

    from tlscale.runners.launch import extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_dir() == str(Path.home() / ".cache" / "tlscale" / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    assert extensions_dir() == "/elsewhere"
    source = (Path(__file__).resolve().parents[2] / "tlscale" / "runners" / "ray_runner.py").read_text()
    assert "os.environ.update(op_build_env())" in source


def test_every_runner_builds_ops_with_the_environments_ninja(monkeypatch):
    """Two ninja versions on PATH (the system's, pip's) took each other's builds for stale: Ray and local
    runs recompiled DeepSpeed's ops on every switch. Workers get this environment's ninja first."""
    import os
    import sys
    from pathlib import Path

    from tlscale.runners.launch import op_build_env

    own_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", own_bin, "/bin"]))
    assert (Path(own_bin) / "ninja").is_file()  # pip's ninja, a DeepSpeed dependency
    assert op_build_env()["PATH"] == os.pathsep.join([own_bin, "/usr/bin", "/bin"])
    monkeypatch.setenv("PATH", os.pathsep.join([own_bin, "/usr/bin"]))
    assert "PATH" not in op_build_env()  # already first: left alone


def test_a_stale_deepspeed_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """A compile killed halfway leaves <op>/lock; torch would wait for it forever."""
    import os
    import time

    from tlscale.runners.launch import clear_stale_build_locks

    for op in ("cpu_adam", "deepspeed_shm_comm"):
        (tmp_path / op).mkdir()
        (tmp_path / op / "lock").write_text("")
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "cpu_adam" / "lock", (hour_ago, hour_ago))
    assert clear_stale_build_locks(str(tmp_path)) == [tmp_path / "cpu_adam" / "lock"]
    assert not (tmp_path / "cpu_adam" / "lock").exists() and (tmp_path / "deepspeed_shm_comm" / "lock").exists()


def test_deepspeed_ops_build_into_the_folder_the_runners_use():
    """`make setup` runs this so that no DeepSpeed run compiles (1-3 minutes, every rank waiting): after it,
    both CPU ops are in the runners' extensions folder (already built there, this takes seconds)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    from tlscale.runners.launch import extensions_dir

    result = subprocess.run([sys.executable, "-m", "tlscale.runners.deepspeed_ops"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ready in") == 2 and "Setting accelerator" not in result.stdout + result.stderr
    for op in ("deepspeed_shm_comm", "cpu_adam"):
        assert list((Path(extensions_dir()) / op).glob("*.so")), op


def test_a_saved_causal_lm_is_verified_as_a_fresh_process_would_load_it_even_inside_zero3(tmp_path):
    """A 1-process ZeRO-3 run verifies its saved model in its own process, where transformers builds every
    model through deepspeed.zero.Init: the causal-LM skeleton on the meta device failed ('Cannot copy out of
    meta tensor'), found by bench/gpu_suite.py's ZeRO-3 offload part."""
    pytest.importorskip("deepspeed")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    from tlscale.models.tiny import tiny_model_dir
    from tlscale.models.verify import batch_loss, verify_saved_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    model.save_pretrained(tmp_path)
    ids = torch.randint(5, 100, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    expected = batch_loss(model, batch)
    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 1})  # what a ZeRO-3 run holds
    assert is_deepspeed_zero3_enabled()
    report = verify_saved_model(tmp_path, batch, expected, "AutoModelForCausalLM")
    assert report["reloaded_loss"] == pytest.approx(expected, abs=1e-4)
    assert is_deepspeed_zero3_enabled() and keep  # the run's own setting is back afterwards
