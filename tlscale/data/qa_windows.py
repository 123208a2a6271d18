"""Question + context into overlapping token windows, with answer labels and character offsets.

A context longer than max_length is cut into windows that overlap by doc_stride tokens (the fast
tokenizer's overflow). Each window keeps, for its context tokens, the character span in the original
context, so predicted token spans map back to exact original text. The label of a window is the token
span of the first gold answer, or (0, 0), the CLS position, when the answer is not inside the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tlscale.data.qa import Question
from tlscale.errors import ConfigError, DataError

MAX_REPORTED = 20


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
        raise ConfigError(f"qa.doc_stride: must be below model.max_length / 2 ({max_length // 2}), found {doc_stride}")
    check_room(questions, tokenizer, max_length, doc_stride)
    # Question first, context second and windowed, whatever the tokenizer's padding side: windows are not padded
    # here (collate_windows pads on the right), and offsets below take the context as sequence 1.
    encoded = tokenizer([q.question for q in questions], [q.context for q in questions], truncation="only_second",
                        max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=False)
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


def check_room(questions: list[Question], tokenizer, max_length: int, doc_stride: int) -> None:
    """Every window holds the whole question, the special tokens and a slice of the context that must be longer
    than doc_stride (consecutive windows overlap by doc_stride tokens). A question that leaves no room for that
    makes the tokenizer fail (a truncation error, or a panic when doc_stride does not fit), so measure the
    questions first and name each one that does not fit. A question whose whole context fits in one window needs
    no stride and is fine."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - special  # tokens for the question and a context slice
    if not questions:
        return
    lengths = tokenizer([q.question for q in questions], add_special_tokens=False, verbose=False)["input_ids"]
    tight = [i for i, ids in enumerate(lengths) if room - len(ids) <= doc_stride]
    if not tight:
        return
    contexts = tokenizer([questions[i].context for i in tight], add_special_tokens=False, verbose=False)["input_ids"]
    problems = []
    for i, context in zip(tight, contexts):
        asked = len(lengths[i])
        if asked + len(context) <= room:  # one window, no truncation
            continue
        left = room - asked
        problems.append(f"{questions[i].where}: the question is {asked} tokens; model.max_length {max_length} minus "
                        f"the question and {special} special tokens leaves {max(left, 0)} tokens of context per "
                        f"window, which must be more than qa.doc_stride ({doc_stride}); raise model.max_length, "
                        f"lower qa.doc_stride or shorten the question")
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        raise DataError(shown + ([f"... and {more} more questions too long for the windows"] if more else []))


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
