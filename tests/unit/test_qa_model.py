"""Span models on windows: the head is new and trains (also under LoRA), and the evaluation path is exact."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import DATA
from tlscale.data.qa import read_questions
from tlscale.data.qa_windows import make_windows
from tlscale.eval.qa_evaluation import collate_windows, qa_metrics, window_logits
from tlscale.models.layers import layer_groups, new_head_modules
from tlscale.models.loading import build_qa_model, load_tokenizer
from tlscale.spec.schema import ModelSpec
from tlscale.strategies.base import strategy_spec
from tlscale.strategies import build_strategy


@pytest.fixture(scope="module")
def small_qa():
    spec = ModelSpec(name_or_path="tiny:bert", max_length=96)
    tokenizer = load_tokenizer(spec)
    questions = read_questions(DATA / "xquad" / "xquad.en.json")[:8]
    return spec, tokenizer, questions, make_windows(questions, tokenizer, 96, 32)


def test_qa_model_has_a_new_span_head_and_layer_groups(small_qa):
    spec, *_ = small_qa
    model = build_qa_model(spec)
    assert new_head_modules(model) == ["qa_outputs"]
    groups = layer_groups(model)
    assert len(groups.blocks) == 2 and "qa_outputs.weight" in groups.head
    assert all(name.startswith("bert.") for name in groups.embeddings)


def test_overfits_eight_questions_and_scores_them(small_qa):
    """Mechanics end to end: labels, collation, logits per window, spans back to text, EM/F1."""
    spec, tokenizer, questions, windows = small_qa
    torch.manual_seed(0)
    model = build_qa_model(spec)
    before, _ = qa_metrics(questions, windows, window_logits(model, windows, list(range(len(windows))),
                                                             tokenizer.pad_token_id, 16, "cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    everything = list(range(len(windows)))
    model.train()
    for _ in range(60):
        batch = collate_windows(windows, everything, tokenizer.pad_token_id)
        batch.pop("index")
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after, answers = qa_metrics(questions, windows, window_logits(model, windows, everything,
                                                                  tokenizer.pad_token_id, 16, "cpu"))
    assert before["exact_match"] < 30 and after["exact_match"] >= 75, (before, after)
    assert after["total"] == 8 and set(answers) == {q.id for q in questions}


def test_lora_on_a_span_model_trains_the_head(small_qa):
    spec, *_ = small_qa
    model = build_strategy(strategy_spec(name="lora", r=4)).apply(build_qa_model(spec))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("qa_outputs.modules_to_save" in n for n in trainable) and any("lora_A" in n for n in trainable)
