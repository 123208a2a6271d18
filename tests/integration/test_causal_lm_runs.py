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
            "training": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "log_every_steps": 3, "report_to": []}}
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


def test_qlora_on_a_causal_lm_saves_a_plain_merged_model(tmp_path):
    """The merge dequantizes the 4-bit base: the saved folder must say so. It used to keep the base's
    quantization_config, so from_pretrained read the merged weights as packed 4-bit ones and the run's own
    verification failed on the reload."""
    import torch
    from transformers import AutoModelForCausalLM

    path = write_spec(tmp_path / "lm.yaml", lm_spec(tmp_path, "llama", False, strategy={"name": "qlora", "r": 4},
                                                    training={"epochs": 1}))
    result = run_cli("train", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["saved_model_verified"] is True
    assert "quantization_config" not in json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_shipped_sft_config_trains_generates_and_reevaluates(tmp_path):
    """configs/sft-tiny-gpt2.yaml end to end: the label words are learned (eval loss near ln 2 / 2: EOS
    certain, the sentiment a coin flip for a random tiny model), `tlscale eval` on the saved model reproduces
    the training run's figures, `tlscale generate` answers with a label word, predict points to generate."""
    from tests.conftest import ROOT

    run = tmp_path / "run"
    result = run_cli("train", str(ROOT / "configs" / "sft-tiny-gpt2.yaml"), f"output_dir={run}", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run / "metrics.json").read_text())["eval"]
    assert trained["loss"] < 1.0 and trained["num_examples"] == 48
    result = run_cli("eval", str(ROOT / "configs" / "sft-tiny-gpt2.yaml"), f"output_dir={run}",
                     "--checkpoint", str(run / "model"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((run / "eval" / "metrics.json").read_text())["eval"]
    assert again["loss"] == pytest.approx(trained["loss"], abs=1e-5) and again["tokens"] == trained["tokens"]
    assert (run / "eval" / "generations.jsonl").is_file()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Review: a gorgeous , witty film\nSentiment:"}) + "\n")
    result = run_cli("generate", "--checkpoint", str(run), "--input", str(prompts), "--output",
                     str(tmp_path / "out.jsonl"), "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    completion = json.loads((tmp_path / "out.jsonl").read_text())["completion"]
    assert completion.strip() in {"positive", "negative"}, completion
    result = run_cli("predict", "--checkpoint", str(run / "model"), "--input", str(prompts), "--output",
                     str(tmp_path / "p.jsonl"))
    assert result.returncode == 2 and "tlscale generate" in result.stderr and "Traceback" not in result.stderr
