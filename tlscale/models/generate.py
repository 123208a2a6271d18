"""Completions from a causal LM: `tlscale generate`, the sampled generations of a causal_lm run, and
generation-based few-shot prompts. Prompts are tokenized exactly as causal_lm training tokenized them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria

from tlscale.data.batching import attention_mask
from tlscale.data.batching import pad as pad_rows
from tlscale.data.causal_lm import prompt_ids
from tlscale.errors import ConfigError

@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy: the same text every time
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # cut the completion at the first of these
    batch_size: int = 8


def load_causal_lm(checkpoint: str | Path):
    """(model, tokenizer) from a saved causal-LM folder or the run folder holding one (RUN/model)."""
    from tlscale.models.saved import load_task_model

    return load_task_model(checkpoint, "AutoModelForCausalLM")


def complete(model, tokenizer, prompts: list[str], sampling: Sampling, device=None) -> list[str]:
    """One completion per prompt."""
    return complete_ids(model, tokenizer, [prompt_ids(tokenizer, p) for p in prompts], sampling, device)


@torch.no_grad()
def complete_ids(model, tokenizer, prompts: list[list[int]], sampling: Sampling, device=None) -> list[str]:
    """Completions of tokenized prompts, batched with left padding (generate derives positions from the mask)."""
    device = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p} \
        if sampling.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training = model.training
    model.eval()
    texts = []
    for first in range(0, len(prompts), sampling.batch_size):
        encoded = prompts[first:first + sampling.batch_size]
        width = max(len(ids) for ids in encoded)
        ids, mask = pad_rows(encoded, pad, left=True), attention_mask(encoded, left=True)
        torch.manual_seed(sampling.seed + first)
        if sampling.stop:
            options["stopping_criteria"] = [StopOnText(tokenizer, sampling.stop, width)]
        output = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
                                pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **options)
        for row in output[:, width:]:
            texts.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), sampling.stop))
    model.train(was_training)
    return texts


class StopOnText(StoppingCriteria):
    """Ends a row once its decoded completion contains a stop string. It works on the text, so a stop string
    may span tokens or be missing from the vocabulary (transformers' stop_strings needs its tokens)."""

    def __init__(self, tokenizer, stop: list[str], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, [s for s in stop if s], prompt_width

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def chat_prompt(tokenizer, user_text: str) -> str:
    """A user turn rendered with the tokenizer's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat: this model's tokenizer has no chat template; pass plain prompts")
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)


def read_prompts(path: Path) -> list[str]:
    """The `prompt` column of a jsonl/json/csv/tsv/parquet file."""
    from tlscale.data.readers import read_table
    from tlscale.errors import DataError

    table = read_table(path, "auto")
    if "prompt" not in table.columns:
        raise DataError(f"{path}: expected a 'prompt' column, found {sorted(table.columns)}")
    prompts = []
    for record in table.records:
        value = record.values.get("prompt")
        if not isinstance(value, str):
            raise DataError(f"{record.where}: prompt: expected text, found {type(value).__name__}")
        prompts.append(value)
    return prompts
