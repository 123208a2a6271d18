"""Question + context into overlapping token windows, with answer labels and character offsets.

A context longer than max_length is cut into windows that overlap by doc_stride tokens (the fast
tokenizer's overflow). Each window keeps, for its context tokens, the character span in the original
context, so predicted token spans map back to exact original text. The label of a window is the token
span of the first gold answer, or (0, 0), the CLS position, when the answer is not inside the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tlscale.data.qa import Question
from tlscale.errors import ConfigError


@dataclass
class Windows:
    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)  # None: not a context token
    question_index: list[int] = field(default_factory=list)  # which question each window belongs to
    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def make_windows(questions: list[Question], tokenizer, max_length: int, doc_stride: int) -> Windows:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.name_or_path: extractive QA needs a fast tokenizer (character offsets)")
    if doc_stride >= max_length // 2:
        raise ConfigError(f"data.doc_stride: must be well below max_length/2 ({max_length // 2}), found {doc_stride}")
    pad_right = tokenizer.padding_side == "right"
    encoded = tokenizer([q.question for q in questions], [q.context for q in questions],
                        truncation="only_second" if pad_right else "only_first", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding=False)
    windows = Windows()
    for i, ids in enumerate(encoded["input_ids"]):
        q = encoded["overflow_to_sample_mapping"][i]
        sequence = encoded.sequence_ids(i)
        offsets = [tuple(span) if sequence[t] == 1 else None for t, span in enumerate(encoded["offset_mapping"][i])]
        start, end = _label(questions[q], offsets)
        windows.input_ids.append(ids)
        windows.token_type_ids.append(encoded["token_type_ids"][i] if "token_type_ids" in encoded else [0] * len(ids))
        windows.offsets.append(offsets)
        windows.question_index.append(q)
        windows.start_positions.append(start)
        windows.end_positions.append(end)
    return windows


def _label(question: Question, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token span of the first answer inside this window, else (0, 0)."""
    if not question.answers:
        return 0, 0
    start_char = question.starts[0]
    end_char = start_char + len(question.answers[0])
    context = [t for t, span in enumerate(offsets) if span is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(t for t in context if offsets[t][1] > start_char)
    end = next(t for t in reversed(context) if offsets[t][0] < end_char)
    return start, end
