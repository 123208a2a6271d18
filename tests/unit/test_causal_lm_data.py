"""Causal-LM data: prompt masking, EOS, truncation counted, packing without cross-attention."""
from __future__ import annotations

import json

import pytest
import torch

from tlscale.data.causal_lm import IGNORE, collate_lm, pack, read_lm_records, tokenize_lm
from tlscale.errors import DataError
from tlscale.models import load_tokenizer
from tlscale.spec.schema import ModelSpec

ROWS = [{"prompt": "Review: a gorgeous film. Sentiment:", "completion": " positive"},
        {"prompt": "Review: dull and far too long. Sentiment:", "completion": " negative"},
        {"prompt": "Translate to French: cat ->", "completion": " chat"},
        {"prompt": "Q: 2 + 2 = ?\nA:", "completion": " 4"}]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(name_or_path="tiny:gpt2", max_length=64))


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_tokens_carry_no_loss_and_eos_ends_each_example(tmp_path, tokenizer):
    records = read_lm_records(write_jsonl(tmp_path / "sft.jsonl", ROWS), tokenizer)
    data = tokenize_lm(records, tokenizer, 64)
    for row, ids, labels in zip(ROWS, data.input_ids, data.labels):
        prompt_length = 1 + len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])  # BOS + prompt
        assert ids[0] == tokenizer.bos_token_id
        assert labels[:prompt_length] == [IGNORE] * prompt_length
        assert labels[prompt_length:] == ids[prompt_length:]
        assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
        completion = tokenizer.decode(ids[prompt_length:-1])
        assert completion.strip() == row["completion"].strip()


def test_truncation_is_counted(tmp_path, tokenizer):
    records = read_lm_records(write_jsonl(tmp_path / "sft.jsonl", ROWS), tokenizer)
    data = tokenize_lm(records, tokenizer, 12)
    assert data.truncated >= 1 and all(len(ids) <= 12 for ids in data.input_ids)


def test_bad_records_name_their_line(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": "x", "completion": ""}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected text in prompt and a non-empty completion"):
        read_lm_records(path, tokenizer)
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "hello"}]}])
    with pytest.raises(DataError, match="chat template"):
        read_lm_records(path, tokenizer)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packing_gives_the_same_per_example_loss(tmp_path, tokenizer, arch):
    from transformers import AutoModelForCausalLM

    from tlscale.models import resolve_model_path

    records = read_lm_records(write_jsonl(tmp_path / "sft.jsonl", ROWS), tokenizer)
    data = tokenize_lm(records, tokenizer, 64)
    packed = pack(data, 64)
    assert len(packed) < len(data)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(f"tiny:{arch}")).eval()

    def per_example_losses(dataset, segments):
        batch = collate_lm(dataset, list(range(len(dataset))), tokenizer.pad_token_id)
        batch.pop("index")
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits
        token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                       ignore_index=IGNORE, reduction="none")
        losses = {}
        for row in range(len(dataset)):
            for t in range(labels.shape[1] - 1):
                if labels[row, t + 1] != IGNORE:
                    example = segments(row, t + 1)
                    losses.setdefault(example, []).append(token_loss[row, t].item())
        return {k: sum(v) / len(v) for k, v in losses.items()}

    plain = per_example_losses(data, lambda row, t: row)
    together = per_example_losses(packed, lambda row, t: packed.segments[row][t])
    assert plain.keys() == together.keys() == set(range(len(ROWS)))
    for example in plain:
        assert together[example] == pytest.approx(plain[example], abs=1e-4)
