"""Extractive QA data: SQuAD-style questions, token windows over long contexts, and spans mapped back.

Inputs: SQuAD v1.1/v2 nested JSON (data[].paragraphs[].qas[]) or flat jsonl/csv rows with question,
context and answers ({"text": [...], "answer_start": [...]} or a list of {"text", "answer_start"}).
A missing field is fatal (every bad record listed with its id and place), and so is a question of a SQuAD JSON
file without answers unless it is marked `is_impossible: true` (v2): in a v1 file it is a broken record that
would train the model to answer nothing. An answer whose text is not at
its answer_start in the context is a bad record too, but a common one in real data: such questions are
skipped from training and counted, never silently; evaluation scores by answer text, so they stay there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tlscale.errors import DataError

MAX_REPORTED = 20


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[str]  # gold texts; empty for an unanswerable (v2) question
    starts: list[int]  # character offsets of the answers in the context
    article: int  # index of the article in a SQuAD file (-1 for flat files): splits go by article
    where: str  # file and place, for messages

    def aligned(self) -> bool:
        return all(self.context[s:s + len(a)] == a for a, s in zip(self.answers, self.starts))


def read_questions(path: Path, need_answers: bool = True) -> list[Question]:
    """need_answers=False: questions to answer (`tlscale predict`), gold answers optional."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".json":
        return _read_squad_json(path, need_answers)
    return _read_flat(path, need_answers)


def _read_squad_json(path: Path, need_answers: bool) -> list[Question]:
    from tlscale.data.readers import DuplicateKey, load_json

    try:
        document = load_json(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, DuplicateKey) as exc:
        raise DataError(f"{path}: not a SQuAD JSON file ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"{path}: expected SQuAD JSON with a top-level 'data' list of articles")
    questions, problems = [], []
    for a, article in enumerate(document["data"]):
        for p, paragraph in enumerate(_objects(article, "paragraphs", f"{path}:data[{a}]", problems)):
            where_p = f"{path}:data[{a}].paragraphs[{p}]"
            for q, qa in enumerate(_objects(paragraph, "qas", where_p, problems)):
                raw = {"id": qa.get("id"), "question": qa.get("question"), "context": paragraph.get("context"),
                       "answers": qa.get("answers"), "is_impossible": qa.get("is_impossible", False)}
                question = _question(raw, a, f"{where_p}.qas[{q}]", problems, need_answers)
                if question is not None:
                    questions.append(question)
    _raise_if(problems, path)
    return questions


def _objects(parent: object, key: str, where: str, problems: list[str]) -> list[dict]:
    """parent[key] as a list of objects; anything else is one problem, not a traceback."""
    children = parent.get(key, []) if isinstance(parent, dict) else None
    if not isinstance(children, list) or not all(isinstance(child, dict) for child in children):
        problems.append(f"{where}: expected an object with a list of objects under '{key}'")
        return []
    return children


def _read_flat(path: Path, need_answers: bool) -> list[Question]:
    from tlscale.data.readers import read_table

    table = read_table(path, "auto")
    questions, problems = [], []
    for record in table.records:
        raw, where = dict(record.values), record.where
        answers = raw.get("answers")
        if isinstance(answers, str):  # csv: the answers column holds JSON
            try:
                raw["answers"] = json.loads(answers)
            except json.JSONDecodeError:
                problems.append(f"{where}: answers: expected JSON such as {{\"text\": [...], \"answer_start\": [...]}}")
                continue
        question = _question(raw, -1, where, problems, need_answers)
        if question is not None:
            questions.append(question)
    _raise_if(problems, path)
    return questions


def _question(raw: dict, article: int, where: str, problems: list[str], need_answers: bool = True) -> Question | None:
    qid = raw.get("id")
    label = f"{where} (id {qid})" if qid is not None else where
    missing = [k for k in ("question", "context") if raw.get(k) is None or (isinstance(raw[k], str)
                                                                            and not raw[k].strip())]
    if missing:
        problems.append(f"{label}: missing or empty {', '.join(missing)}")
        return None
    not_text = [k for k in ("question", "context") if not isinstance(raw[k], str)]
    if not_text:
        from tlscale.data.readers import kind_of

        problems.extend(f"{label}: {k}: expected text, found {kind_of(raw[k])}" for k in not_text)
        return None
    texts, starts = _answers(raw.get("answers"))
    if texts is None:
        problems.append(f"{label}: answers: expected a list of {{text, answer_start}} or {{text: [...], "
                        f"answer_start: [...]}}, found {type(raw.get('answers')).__name__}")
        return None
    impossible = raw.get("is_impossible")
    if need_answers and not texts and not _truthy(impossible):
        if raw.get("answers") is None:
            problems.append(f"{label}: missing answers")
            return None
        if impossible is not None:  # SQuAD JSON, or a row that says it is answerable
            problems.append(f"{label}: no answers; a SQuAD v1 question needs at least one (an unanswerable v2 "
                            "question says is_impossible: true)")
            return None
    return Question(id=str(qid if qid is not None else where), question=raw["question"].strip(),
                    context=raw["context"], answers=texts, starts=starts, article=article, where=label)


def _answers(value) -> tuple[list[str] | None, list[int]]:
    if value is None:
        return [], []
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        texts, starts = value["text"], value.get("answer_start", [])
    elif isinstance(value, list) and all(isinstance(a, dict) and "text" in a for a in value):
        texts, starts = [a["text"] for a in value], [a.get("answer_start") for a in value]
    else:
        return None, []
    if len(starts) != len(texts) or not all(isinstance(s, int) and not isinstance(s, bool) for s in starts):
        return None, []
    if not all(isinstance(t, str) for t in texts):
        return None, []
    return list(texts), list(starts)


def _truthy(value) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _raise_if(problems: list[str], path: Path) -> None:
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        raise DataError(shown + ([f"{path}: ... and {more} more bad records"] if more else []))


@dataclass
class QuestionSplit:
    train: list[Question]
    eval: list[Question]
    skipped_misaligned: list[str] = field(default_factory=list)  # ids left out of training


def fingerprint(questions: list[Question]) -> str:
    """SHA-256 of the questions in order (id, question, context, answers): the same evaluation set, proven."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps([q.id, q.question, q.context, q.answers]).encode() + b"\n")
    return digest.hexdigest()


def split_by_article(questions: list[Question], train_articles: int) -> tuple[list[Question], list[Question]]:
    """First train_articles articles for training, the rest for evaluation: never split by question,
    or paragraphs of one article would sit on both sides."""
    articles = sorted({q.article for q in questions})
    if -1 in articles:
        raise DataError("data: split by article needs SQuAD JSON (flat rows have no articles); give an eval_file")
    if not 0 < train_articles < len(articles):
        raise DataError(f"data.train_articles: expected 1..{len(articles) - 1} (the file has {len(articles)} "
                        f"articles), found {train_articles}")
    keep = set(articles[:train_articles])
    return [q for q in questions if q.article in keep], [q for q in questions if q.article not in keep]


def drop_misaligned(questions: list[Question]) -> tuple[list[Question], list[str]]:
    kept = [q for q in questions if q.aligned()]
    return kept, [q.id for q in questions if not q.aligned()]
