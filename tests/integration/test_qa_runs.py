"""extractive_qa through the one loop: tiny model mechanics, spec errors, and (slow) real MiniLM on XQuAD
against trivial baselines computed on the same held-out articles."""
from __future__ import annotations

import json
import random
import re

import pytest

from tests.conftest import DATA, ROOT, run_cli, write_spec
from tests.unit.cli_checks import expect_error
from tlscale.data.qa import read_questions, split_by_article
from tlscale.eval.squad import squad_scores

XQUAD = DATA / "xquad" / "xquad.en.json"


def qa_spec(output_dir, **sections) -> dict:
    spec = {"task": "extractive_qa", "seed": 7, "output_dir": str(output_dir),
            "model": {"name_or_path": "tiny:bert", "max_length": 128},
            "data": {"train_file": str(XQUAD), "limit": 64, "eval_limit": 32},
            "qa": {"train_articles": 32, "doc_stride": 32},
            "training": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "log_every_steps": 2, "report_to": []}}
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


def test_tiny_qa_run_trains_scores_and_saves(tmp_path):
    path = write_spec(tmp_path / "qa.yaml", qa_spec(tmp_path / "run", training={"eval_every_steps": 5}))
    result = run_cli("train", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval exact match" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "extractive_qa" and metrics["saved_model_verified"] is True
    assert metrics["eval"]["total"] == 32 and metrics["data"]["eval_questions"] == 32
    assert metrics["data"]["train_windows"] > metrics["data"]["train_questions"] == 64  # long contexts split
    assert metrics["best_step"] is not None  # metric_for_best auto -> f1
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 32 and all({"id", "prediction", "answers"} <= set(p) for p in predictions)
    from transformers import AutoModelForQuestionAnswering

    AutoModelForQuestionAnswering.from_pretrained(tmp_path / "run" / "model")  # plain transformers loads it

    # `tlscale eval` on the saved model reproduces the run's final scores; `predict` answers questions
    # that come without gold answers, and gives the answers the evaluation gave.
    result = run_cli("eval", str(path), "--checkpoint", str(tmp_path / "run" / "model"))
    assert result.returncode == 0 and "eval exact match" in result.stdout, result.stderr[-3000:]
    again = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["eval"]
    assert again["f1"] == pytest.approx(metrics["eval"]["f1"]) and again["exact_match"] == metrics["eval"]["exact_match"]
    by_id = {q.id: q for q in read_questions(XQUAD)}
    asked = tmp_path / "questions.jsonl"
    asked.write_text("".join(json.dumps({"id": p["id"], "question": by_id[p["id"]].question,
                                         "context": by_id[p["id"]].context}) + "\n" for p in predictions[:8]))
    result = run_cli("predict", "--checkpoint", str(tmp_path / "run" / "model"), "--input", str(asked),
                     "--output", str(tmp_path / "answers.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == [p["prediction"] for p in predictions[:8]]


@pytest.mark.parametrize("override,message", [
    ({"qa": {"doc_stride": 64}}, "qa.doc_stride: must be below model.max_length / 2"),
    ({"training": {"metric_for_best": "accuracy"}}, "metric_for_best: expected one of"),
    ({"qa": {"train_articles": 48}}, "train_articles: expected 1..47"),
])
def test_qa_spec_mistakes_exit_2(tmp_path, override, message):
    expect_error(["validate", write_spec(tmp_path / "qa.yaml", qa_spec(tmp_path / "run", **override))], message)


def test_classification_spec_refuses_a_qa_section(tmp_path):
    from tests.conftest import tiny_spec

    raw = tiny_spec(tmp_path / "o", tmp_path / "t.tsv")
    raw["qa"] = {"doc_stride": 16}
    expect_error(["validate", write_spec(tmp_path / "c.yaml", raw), "--no-check-data"],
                 "qa section only applies to task 'extractive_qa'")


def first_sentence(context: str) -> str:
    return re.split(r"(?<=[.!?])\s", context, maxsplit=1)[0]


def random_span(context: str, rng: random.Random) -> str:
    words = context.split()
    start = rng.randrange(len(words))
    return " ".join(words[start:start + rng.randint(1, 5)])


@pytest.mark.slow
def test_minilm_on_held_out_xquad_articles_beats_trivial_baselines(tmp_path):
    """The shipped tuned recipe (configs/xquad-minilm-full-long.yaml: batch 8, layer LR decay 0.9, head LR 1e-3,
    bf16) cut from 8 epochs to 2: EM/F1 on the 16 held-out articles, with the first-sentence and random-span
    baselines scored on the same questions by the same metric (first sentence: EM 0.0, F1 8.3; random span: EM
    0.0, F1 3.7). Measured (`tlscale train configs/xquad-minilm-full-long.yaml training.epochs=2 seed=S`, ~145 s
    each): F1 44.4 / 34.6 / 35.3 / 40.1, EM 28.3 / 21.4 / 20.3 / 27.8 at seeds 42 / 1 / 2 / 3, against a floor of
    F1 23.3 and EM 12. The earlier short recipe (xquad-minilm-full.yaml at 2 epochs: batch 16, one LR) stopped
    part-way out of its loss plateau and scored F1 27.7 / 12.6 / 24.8 / 18.9 at those seeds: above the floor at
    seed 42 by 4 F1, below it at seeds 1 and 3 (bench/README)."""
    out = tmp_path / "xquad"
    result = run_cli("train", str(ROOT / "configs" / "xquad-minilm-full-long.yaml"), "--no-progress",
                     f"output_dir={out}", "training.epochs=2", timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    _, held_out = split_by_article(read_questions(XQUAD), 32)
    golds = {q.id: q.answers for q in held_out}
    rng = random.Random(0)
    baselines = {"first sentence": squad_scores({q.id: first_sentence(q.context) for q in held_out}, golds),
                 "random span": squad_scores({q.id: random_span(q.context, rng) for q in held_out}, golds)}
    best_f1 = max(b["f1"] for b in baselines.values())
    ours = metrics["eval"]
    print(f"XQuAD 16 held-out articles, 2 epochs: EM {ours['exact_match']:.1f} F1 {ours['f1']:.1f}; baselines "
          + ", ".join(f"{k} EM {v['exact_match']:.1f} F1 {v['f1']:.1f}" for k, v in baselines.items()))
    assert ours["total"] == len(held_out) == metrics["data"]["eval_questions"]
    assert metrics["saved_model_verified"] is True
    assert ours["f1"] >= best_f1 + 15 and ours["exact_match"] >= 12
