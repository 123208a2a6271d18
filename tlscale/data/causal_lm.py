"""Causal-LM supervised fine-tuning data: records -> token ids with prompt-masked labels -> (packed) batches.

Records (jsonl/json/csv/parquet), one kind per file:
- {"prompt": ..., "completion": ...}: the loss is on the completion (and its EOS) only;
- {"messages": [{"role", "content"}, ...]}: rendered with the tokenizer's chat template; the last message
  (the assistant's) is the completion, everything before it the prompt;
- {"text": ...}: continued pretraining, the loss is on every token.
EOS is appended to every example. Packing puts several examples into one sequence of max_length with a
block-diagonal causal mask and per-example position ids, so no example attends to another: packed and
unpacked per-example losses agree (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tlscale.data.batching import attention_mask, pad
from tlscale.errors import DataError

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch

IGNORE = -100
KINDS = {"prompt_completion": ("prompt", "completion"), "messages": ("messages",), "text": ("text",)}


@dataclass
class LMRecord:
    prompt: str  # "" for plain text
    completion: str
    where: str


@dataclass
class LMExamples:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    position_ids: list[list[int]] | None = None  # packed sequences restart positions per example
    segments: list[list[int]] | None = None  # packed: which example each token belongs to
    truncated: int = 0
    prompts: list[str] = field(default_factory=list)  # for sampled generations

    def __len__(self) -> int:
        return len(self.input_ids)


def read_lm_records(path, tokenizer) -> list[LMRecord]:
    from tlscale.data.readers import read_table

    table = read_table(path, "auto")
    columns = set(table.columns)
    kind = next((k for k, needed in KINDS.items() if set(needed) <= columns), None)
    if kind is None:
        raise DataError(f"{path}: expected records with prompt+completion, messages, or text; found columns "
                        f"{sorted(columns)}")
    records, problems = [], []
    for record in table.records:
        values, where = record.values, record.where
        if kind == "prompt_completion":
            prompt, completion = values.get("prompt"), values.get("completion")
            wrong = _not_text(values, ("prompt", "completion"), required=("completion",))
            if wrong:
                problems.append(f"{where}: expected text in prompt and a non-empty completion; {wrong}")
                continue
            records.append(LMRecord(prompt, completion, where))
        elif kind == "messages":
            rendered = _render_messages(values.get("messages"), tokenizer, where, problems)
            if rendered is not None:
                records.append(LMRecord(*rendered, where))
        else:
            text = values.get("text")
            wrong = _not_text(values, ("text",), required=("text",))
            if wrong:
                problems.append(f"{where}: expected non-empty text; {wrong}")
                continue
            records.append(LMRecord("", text, where))
    if problems:
        raise DataError(problems[:20] + ([f"{path}: ... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _not_text(values: dict, columns: tuple[str, ...], required: tuple[str, ...]) -> str:
    """'' when every column holds text (non-blank where required), else what the first bad one holds: a JSON
    list or number would otherwise be trained on as its Python repr, or crash tokenization."""
    from tlscale.data.readers import kind_of

    for column in columns:
        value = values.get(column)
        if not isinstance(value, str):
            return f"column '{column}' holds {kind_of(value)}"
        if column in required and not value.strip():
            return f"column '{column}' is empty"
    return ""


def _render_messages(messages, tokenizer, where: str, problems: list[str]) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        problems.append(f"{where}: messages: expected a list of {{role, content}}")
        return None
    if messages[-1]["role"] != "assistant":
        problems.append(f"{where}: messages: the last message must be the assistant's (the completion to learn)")
        return None
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: messages need a tokenizer with a chat template, and this one has none; "
                        "use prompt/completion records instead")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return prompt, messages[-1]["content"]


def tokenize_lm(records: list[LMRecord], tokenizer, max_length: int) -> LMExamples:
    """Prompt tokens are labelled IGNORE; completion tokens and the appended EOS are learned.
    Examples longer than max_length are cut from the end and counted."""
    if tokenizer.eos_token_id is None:
        raise DataError("model.name_or_path: the tokenizer has no EOS token; causal_lm needs one to end examples")
    out = LMExamples()
    prefix = leading_special_tokens(tokenizer)
    for record in records:
        prompt = prefix + tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
        completion = tokenizer(record.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt + completion
        labels = [IGNORE] * len(prompt) + completion
        if len(ids) > max_length:
            out.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE for label in labels):
            raise DataError(f"{record.where}: the prompt alone fills model.max_length ({max_length}); nothing to learn")
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.prompts.append(record.prompt)
    return out


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt tokenized exactly as training saw it (generation must continue the same ids)."""
    return leading_special_tokens(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def leading_special_tokens(tokenizer) -> list[int]:
    """What the tokenizer itself puts before a text (Llama: BOS; GPT-2: nothing), without its trailers."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(with_special)) if with_special[i:i + len(plain)] == plain), 0)
    return with_special[:start]


def pack(examples: LMExamples, max_length: int) -> LMExamples:
    """Greedy packing in order: whole examples only, several per sequence of at most max_length."""
    packed = LMExamples(position_ids=[], segments=[], truncated=examples.truncated)
    ids, labels, positions, segments = [], [], [], []
    for i, (x, y) in enumerate(zip(examples.input_ids, examples.labels)):
        if ids and len(ids) + len(x) > max_length:
            packed.input_ids.append(ids), packed.labels.append(labels)
            packed.position_ids.append(positions), packed.segments.append(segments)
            ids, labels, positions, segments = [], [], [], []
        ids, labels = ids + x, labels + y
        positions += list(range(len(x)))
        segments += [i] * len(x)
    if ids:
        packed.input_ids.append(ids), packed.labels.append(labels)
        packed.position_ids.append(positions), packed.segments.append(segments)
    return packed


def collate_lm(data: LMExamples, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding; labels IGNORE on padding. Packed data gets a 4D block-diagonal causal mask."""
    import torch

    rows = [data.input_ids[i] for i in indices]
    width = max(len(row) for row in rows)
    positions = [data.position_ids[i] if data.position_ids else list(range(len(row))) for i, row in zip(indices, rows)]
    batch = {"input_ids": pad(rows, pad_id), "labels": pad([data.labels[i] for i in indices], IGNORE),
             "position_ids": pad(positions, 0), "index": torch.tensor(indices)}
    if data.segments:
        segments = pad([data.segments[i] for i in indices], -1)
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] >= 0)
        allowed = same & causal
        allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaNs)
        batch["attention_mask"] = allowed[:, None]
    else:
        batch["attention_mask"] = attention_mask(rows)
    return batch


def label_tokens(data: LMExamples, indices: list[int]) -> int:
    """Tokens that carry loss (after the shift inside the model: every label but the first position's)."""
    return sum(sum(1 for label in data.labels[i][1:] if label != IGNORE) for i in indices)
