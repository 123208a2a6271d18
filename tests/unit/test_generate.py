"""Completions from causal LMs: batched (left-padded) generation gives what one prompt at a time gives,
stop strings cut, prompts are tokenized as in training, and only causal LMs load."""
from __future__ import annotations

import pytest
import torch

from tlscale.data.causal_lm import prompt_ids, tokenize_lm
from tlscale.errors import ConfigError
from tlscale.models.tiny import tiny_model_dir
from tlscale.models.generate import Sampling, chat_prompt, complete, cut_at_stop, load_causal_lm

PROMPTS = ["Review: a gorgeous film. Sentiment:", "Q: what is two plus two?\nA:", "cat ->",
           "A much longer prompt, with several clauses, so that left padding really matters here:"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny random GPT-2 and Llama causal LMs saved as a training run saves them."""
    from tlscale.models import load_tokenizer
    from tlscale.models.loading import build_causal_lm
    from tlscale.spec.schema import ModelSpec

    folders = {}
    for arch in ("gpt2", "llama"):
        spec = ModelSpec(name_or_path=f"tiny:{arch}", max_length=64)
        torch.manual_seed(0)
        folders[arch] = tmp_path_factory.mktemp(arch)
        build_causal_lm(spec).save_pretrained(folders[arch])
        load_tokenizer(spec).save_pretrained(folders[arch])
    return folders


@pytest.fixture
def tiny_lm(saved):
    return lambda arch: load_causal_lm(saved[arch])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_lm, arch):
    model, tokenizer = tiny_lm(arch)
    sampling = Sampling(max_new_tokens=6, batch_size=4)
    batched = complete(model, tokenizer, PROMPTS, sampling)
    alone = [complete(model, tokenizer, [p], Sampling(max_new_tokens=6, batch_size=1))[0] for p in PROMPTS]
    assert batched == alone
    assert any(text.strip() for text in batched)


def test_sampling_is_seeded(tiny_lm):
    model, tokenizer = tiny_lm("gpt2")
    first = complete(model, tokenizer, PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, seed=3))
    again = complete(model, tokenizer, PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, seed=3))
    other = complete(model, tokenizer, PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, seed=4))
    assert first == again and first != other


def test_prompts_are_tokenized_as_training_tokenized_them(tiny_lm):
    from tlscale.data.causal_lm import LMRecord

    _, tokenizer = tiny_lm("llama")
    trained = tokenize_lm([LMRecord(PROMPTS[0], " positive", "x")], tokenizer, 64)
    prompt_length = sum(1 for label in trained.labels[0] if label == -100)
    assert trained.input_ids[0][:prompt_length] == prompt_ids(tokenizer, PROMPTS[0])


def test_stop_strings_cut_the_completion(tiny_lm):
    assert cut_at_stop("Paris.\nQ: next", ["\n", "Q:"]) == "Paris."
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    model, tokenizer = tiny_lm("gpt2")
    free = complete(model, tokenizer, PROMPTS[:1], Sampling(max_new_tokens=8))[0]
    assert len(free) >= 6, free
    stop = free[3:6]
    cut = complete(model, tokenizer, PROMPTS[:1], Sampling(max_new_tokens=8, stop=[stop]))[0]
    assert cut == free[:free.find(stop)]


def test_chat_prompt_uses_the_template_or_says_there_is_none(tiny_lm):
    _, tokenizer = tiny_lm("llama")
    if getattr(tokenizer, "chat_template", None):
        assert "hello" in chat_prompt(tokenizer, "hello")
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        chat_prompt(tokenizer, "hello")


def test_only_causal_lms_load(tmp_path):
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    with pytest.raises(ConfigError, match="holds LlamaModel, not a causal language model"):
        load_causal_lm(tiny_model_dir("llama"))  # a bare backbone has no LM head

    qa = tmp_path / "qa"
    AutoModelForQuestionAnswering.from_config(AutoConfig.from_pretrained(tiny_model_dir("bert"))).save_pretrained(qa)
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_causal_lm(qa)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="LoRA adapter"):
        load_causal_lm(tmp_path / "adapter")
    with pytest.raises(ConfigError, match="no config.json"):
        load_causal_lm(tmp_path / "missing")
