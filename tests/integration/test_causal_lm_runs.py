"""causal_lm through the one loop on tiny GPT-2 and Llama: loss falls, perplexity reported, generations written,
the saved model reloads with AutoModelForCausalLM; packing on or off."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, write_spec

WORDS = ["a dull", "a gorgeous", "a boring", "a lovely", "an awful", "a great", "a tedious", "a brilliant"]


def sft_file(tmp_path):
    rows = [{"prompt": f"Review: {w} film. Sentiment:", "completion": f" {'positive' if i % 2 else 'negative'}"}
            for i, w in enumerate(WORDS * 12)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lm_spec(tmp_path, arch: str, packing: bool, **sections) -> dict:
    spec = {"task": "causal_lm", "seed": 3, "output_dir": str(tmp_path / "run"),
            "model": {"name_or_path": f"tiny:{arch}", "max_length": 64},
            "data": {"train_file": str(sft_file(tmp_path)), "eval_fraction": 0.2},
            "lm": {"packing": packing, "generations": 2, "max_new_tokens": 5},
            "training": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "log_every_steps": 3, "tensorboard": False}}
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


@pytest.mark.parametrize("arch,packing", [("gpt2", False), ("llama", True)])
def test_sft_run_learns_and_saves(tmp_path, arch, packing):
    from transformers import AutoModelForCausalLM

    # packed: 77 examples fit in 16 sequences, so smaller batches give the same number of steps
    training = {"batch_size": 2, "log_every_steps": 2} if packing else {}
    path = write_spec(tmp_path / "lm.yaml", lm_spec(tmp_path, arch, packing, training=training))
    result = run_cli("train", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert losses[-1] < losses[0] - 0.5, losses
    assert metrics["saved_model_verified"] is True and metrics["eval"]["perplexity"] > 1
    assert metrics["data"]["packing"] is packing
    if packing:
        assert metrics["data"]["train_sequences"] < metrics["data"]["train_examples"]
    generations = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 2 and all("generated" in json.loads(g) for g in generations)
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")


def test_lora_on_a_causal_lm_keeps_the_pretrained_head_frozen(tmp_path):
    path = write_spec(tmp_path / "lm.yaml", lm_spec(tmp_path, "llama", False, strategy={"name": "lora", "r": 4}))
    result = run_cli("train", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "model-adapter" / "adapter_config.json").read_text())
    assert not config.get("modules_to_save")  # the LM head is pretrained: not retrained, not saved
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["saved_model_verified"] is True
