"""Prompts from a template: demonstrations with their answers, then the query cut before its answer.

The whitespace between the query and its answer ("Label: {label}") belongs to the answer: the prompt ends
at "Label:" and the choices are " great" / " terrible", which is how GPT-style tokenizers spell a word
after a space (and how the demonstrations above spell it too)."""
from __future__ import annotations

from dataclasses import dataclass

ANSWER_FIELDS = ("label", "answer")


@dataclass(frozen=True)
class Template:
    demonstration: str  # e.g. "Input: {text}\nLabel: {label}"
    separator: str = "\n\n"
    instruction: str = ""

    @property
    def answer_field(self) -> str:
        return next(f for f in ANSWER_FIELDS if "{" + f + "}" in self.demonstration)

    def _split(self) -> tuple[str, str, str]:
        """(query part, whitespace before the answer, text after the answer)."""
        head, tail = self.demonstration.split("{" + self.answer_field + "}", 1)
        stripped = head.rstrip()
        return stripped, head[len(stripped):], tail

    def render_demonstration(self, fields: dict, answer: str) -> str:
        head, space, tail = self._split()
        return head.format(**fields) + space + answer + tail.format(**fields)

    def render(self, demonstrations: list[tuple[dict, str]], query: dict) -> str:
        """The prompt for one input: instruction, demonstrations, and the query up to (not including) the
        whitespace before its answer."""
        head, _, _ = self._split()
        parts = [self.render_demonstration(fields, answer) for fields, answer in demonstrations]
        parts.append(head.format(**query))
        body = self.separator.join(parts)
        return self.instruction + (self.separator if self.instruction else "") + body

    def answer_prefix(self) -> str:
        """What goes between the prompt and an answer (the whitespace the template puts there)."""
        return self._split()[1]


def verbalize(label_names: list[str], verbalizer: dict[str, str | list[str]] | None) -> list[list[str]]:
    """Label id -> the word(s) that stand for it (default: the label name)."""
    if verbalizer is None:
        return [[name] for name in label_names]
    from tlscale.errors import ConfigError

    missing = [name for name in label_names if name not in verbalizer]
    if missing:
        raise ConfigError(f"fewshot.verbalizer: no word for label(s) {missing}; labels are {label_names}")
    words = [[verbalizer[name]] if isinstance(verbalizer[name], str) else list(verbalizer[name])
             for name in label_names]
    flat = [w for group in words for w in group]
    if len(set(flat)) != len(flat):
        raise ConfigError(f"fewshot.verbalizer: a word stands for two labels: {verbalizer}")
    if any(not w.strip() for w in flat):
        raise ConfigError("fewshot.verbalizer: empty label word")
    return words
