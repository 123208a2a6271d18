"""Continued pretraining (task masked_lm) on raw SST-2 text, and fine-tuning from it (model.init_from)."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tests.conftest import run_cli, tiny_spec, write_spec
from tlscale.tasks.masked_lm import IGNORE, TextSet, mask_example


def mlm_spec(out, train_file, **sections) -> dict:
    raw = tiny_spec(out, train_file, task="masked_lm", mlm={"probability": 0.15},
                    training={"epochs": 2, "batch_size": 16, "lr": 2e-3, "log_every_steps": 1})
    raw["data"] = {"train_file": str(train_file), "text_column": "sentence", "eval_fraction": 0.2}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def test_pretrain_on_raw_text_then_fine_tune_from_it(tmp_path, sst2_files):
    train_file, dev_file = sst2_files
    result = run_cli("train", str(write_spec(tmp_path / "mlm.yaml", mlm_spec(tmp_path / "mlm", train_file))),
                     "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "masked-token loss" in result.stdout
    metrics = json.loads((tmp_path / "mlm" / "metrics.json").read_text())
    assert metrics["task"] == "masked_lm" and metrics["saved_model_verified"] is True
    assert metrics["data"]["train_texts"] == 128 and metrics["data"]["eval_texts"] == 32
    assert 0 <= metrics["eval"]["masked_accuracy"] <= 1 and metrics["eval"]["masked_tokens"] > 32
    curve = losses(tmp_path / "mlm")
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3  # it learns the text
    from transformers import AutoModelForMaskedLM

    pretrained = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm" / "model")
    assert pretrained.get_output_embeddings().weight.data_ptr() == pretrained.get_input_embeddings().weight.data_ptr()

    # Fine-tuning starts from the pretrained encoder, with a new head; the lineage is in metrics.json.
    raw = tiny_spec(tmp_path / "ft", train_file, dev_file, model={"init_from": str(tmp_path / "mlm")},
                    training={"epochs": 1})
    from tlscale.models import build_classifier
    from tlscale.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "ft.yaml", raw))
    classifier = build_classifier(spec.model, ["negative", "positive"])
    assert torch.equal(classifier.backbone.embeddings.word_embeddings.weight,
                       pretrained.bert.embeddings.word_embeddings.weight)
    assert torch.equal(classifier.backbone.encoder.layer[1].output.dense.weight,
                       pretrained.bert.encoder.layer[1].output.dense.weight)
    result = run_cli("train", str(tmp_path / "ft.yaml"), "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tuned = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert tuned["lineage"]["task"] == "masked_lm" and tuned["lineage"]["weights"] == str(tmp_path / "mlm" / "model")
    assert tuned["lineage"]["eval"]["perplexity"] == pytest.approx(metrics["eval"]["perplexity"])
    again = run_cli("eval", str(tmp_path / "mlm.yaml"), "--checkpoint", str(tmp_path / "mlm" / "model"),
                    "--output-dir", str(tmp_path / "re-eval"))  # fixed held-out masks: the same score again
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    rescored = json.loads((tmp_path / "re-eval" / "metrics.json").read_text())
    assert rescored["eval"]["loss"] == pytest.approx(metrics["eval"]["loss"], abs=1e-4)


def text_set(n: int = 400) -> TextSet:
    ids = [[101] + [1000 + (i * 7 + j) % 500 for j in range(20)] + [102] for i in range(n)]
    words = [[None] + [j // 2 for j in range(20)] + [None] for _ in range(n)]  # two pieces per word
    return TextSet(ids, words, seed=3)


def test_masks_are_dynamic_per_epoch_reproducible_and_follow_bert_proportions():
    data = text_set()
    first = [mask_example(data, i, 0.15, False, 103, 30522) for i in range(len(data))]
    assert first == [mask_example(data, i, 0.15, False, 103, 30522) for i in range(len(data))]
    data.round = 1
    assert first != [mask_example(data, i, 0.15, False, 103, 30522) for i in range(len(data))]
    chosen = kinds = 0
    counts = Counter()
    for (inputs, labels), original in zip(first, data.input_ids):
        for position, label in enumerate(labels):
            if label == IGNORE:
                assert inputs[position] == original[position]
                continue
            assert position not in (0, len(labels) - 1)  # never [CLS] / [SEP]
            chosen += 1
            counts["mask" if inputs[position] == 103 else "same" if inputs[position] == label else "random"] += 1
        kinds += len(labels) - 2
    assert 0.13 < chosen / kinds < 0.17
    assert 0.75 < counts["mask"] / chosen < 0.85 and 0.06 < counts["same"] / chosen < 0.14


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    data = text_set(100)
    for i in range(len(data)):
        _, labels = mask_example(data, i, 0.15, True, 103, 30522)
        pieces = labels[1:-1]
        for word in range(10):
            pair = pieces[2 * word:2 * word + 2]
            assert (pair[0] == IGNORE) == (pair[1] == IGNORE)
        assert any(label != IGNORE for label in labels)  # at least one word in every text


def test_masked_lm_mistakes_exit_2(tmp_path, sst2_files):
    train_file, _ = sst2_files
    raw = mlm_spec(tmp_path / "x", train_file, mlm={"probability": 1.5}, model={"init_from": str(tmp_path / "nope")})
    result = run_cli("validate", str(write_spec(tmp_path / "bad.yaml", raw)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mlm.probability" in result.stderr and "model.init_from: expected a run folder" in result.stderr
