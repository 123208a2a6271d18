"""Knowledge distillation (distill: section) and truncated students (model.keep_layers), on the tiny random BERT.

The data is synthetic on purpose: each sentence carries one marker word ("good"/"bad") that decides its gold
label, a rule the tiny model learns in a few epochs. A teacher that says the opposite of gold then shows which
term trains the student: alpha 0 learns the teacher's (wrong) labels, alpha 1 the gold ones.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from tests.conftest import run_cli, tiny_spec, write_spec
from tlscale.data.classification import Examples
from tlscale.errors import ConfigError, DataError
from tlscale.spec import load_spec
from tlscale.tasks.distillation import (UNLABELLED, DistillOptions, Teaching, distillation_loss, select_confident,
                                        soft_label_file, teacher_outputs, transfer_examples)

WORDS = ("the film was a story about an old town where people talk and walk all day long in rain with music "
         "friends dogs".split())


def marker_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 6)
        label = rng.choice(["positive", "negative"])
        words.insert(rng.randrange(7), "good" if label == "positive" else "bad")
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("marker")
    train, dev, extra = marker_rows(240, 0), marker_rows(64, 1), marker_rows(120, 2)

    def tsv(name, rows, labelled=True):
        path = tmp / name
        path.write_text(("sentence\tlabel\n" if labelled else "sentence\n")
                        + "".join(f"{s}\t{l}\n" if labelled else f"{s}\n" for s, l in rows))
        return path

    flipped = {"positive": "negative", "negative": "positive"}
    soft = tmp / "flipped.jsonl"  # a teacher that is always wrong, on the labelled and the unlabelled texts
    soft.write_text("".join(json.dumps({"text": s, "probabilities": {flipped[l]: 0.9, l: 0.1}}) + "\n"
                            for s, l in train + extra))
    return {"train": tsv("train.tsv", train), "dev": tsv("dev.tsv", dev), "unlabeled": tsv("unl.tsv", extra, False),
            "flipped": soft, "dir": tmp}


def spec_for(out, data, **sections):
    sections.setdefault("training", {})
    sections["training"] = {"epochs": 4, "batch_size": 16, "lr": 2e-3, **sections["training"]}
    return tiny_spec(out, data["train"], data["dev"], **sections)


def train(tmp_path, name, raw) -> dict:
    result = run_cli("train", str(write_spec(tmp_path / f"{name}.yaml", raw)), "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((raw_out(raw) / "metrics.json").read_text())


def raw_out(raw):
    from pathlib import Path

    return Path(raw["output_dir"])


@pytest.mark.parametrize("alpha, expect_gold", [(0.0, False), (1.0, True)])
def test_alpha_decides_whether_gold_labels_or_the_teacher_train_the_student(tmp_path, marker_data, alpha,
                                                                             expect_gold):
    raw = spec_for(tmp_path / "run", marker_data, distill={"teacher": [str(marker_data["flipped"])], "alpha": alpha,
                                                          "unlabeled_file": str(marker_data["unlabeled"])})
    metrics = train(tmp_path, "student", raw)
    accuracy = metrics["eval"]["accuracy"]
    assert (accuracy >= 0.9) if expect_gold else (accuracy <= 0.1), accuracy
    facts = metrics["data"]["distill"]
    assert facts["labelled"] == 240 and facts["unlabeled"] == 120 and facts["transfer_texts"] == 360
    assert facts["teacher_train_accuracy"] == 0.0  # the flipped teacher, as the metrics record it
    assert metrics["train_examples"] == 360


def test_a_self_trained_run_keeps_the_selected_unlabelled_texts_and_records_them(tmp_path, marker_data):
    raw = spec_for(tmp_path / "run", marker_data, distill={"teacher": [str(marker_data["flipped"])],
                                                          "unlabeled_file": str(marker_data["unlabeled"]),
                                                          "select_per_class": 20})
    metrics = train(tmp_path, "student", raw)
    facts = metrics["data"]["distill"]
    kept = facts["selected"]
    assert set(kept) == {"negative", "positive"} and all(k["texts"] == 20 for k in kept.values()), kept
    assert all(k["min_probability"] == pytest.approx(0.9) for k in kept.values())
    assert facts["unlabeled"] == 120 and facts["transfer_texts"] == metrics["train_examples"] == 240 + 40
    from tlscale.training.loop import _variants

    assert _variants({"distill": facts}) == " (240 labelled + 40 unlabelled, the teacher's surest of 120)"


def test_a_truncated_student_learns_from_a_run_folder_teacher_and_saves_an_ordinary_model(tmp_path, marker_data):
    teacher = train(tmp_path, "teacher", spec_for(tmp_path / "teacher", marker_data))
    assert teacher["eval"]["accuracy"] >= 0.9
    raw = spec_for(tmp_path / "student", marker_data, model={"keep_layers": [1]},
                   distill={"teacher": [str(tmp_path / "teacher")], "alpha": 0.0, "hidden_weight": 1.0,
                            "unlabeled_file": str(marker_data["unlabeled"])})
    student = train(tmp_path, "student", raw)
    assert student["eval"]["accuracy"] >= 0.9 and student["saved_model_verified"] is True
    assert student["total_params"] < teacher["total_params"]
    lineage = student["data"]["distill"]["teachers"][0]
    assert lineage["teacher"] == str(tmp_path / "teacher") and lineage["cache"] == "computed"
    assert lineage["run_eval"]["accuracy"] == teacher["eval"]["accuracy"]
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student" / "model", trust_remote_code=True)
    assert AutoConfig.from_pretrained(tmp_path / "student" / "model").num_hidden_layers == 1
    assert len(model.backbone.encoder.layer) == 1
    # A second student of the same teacher and texts reuses the cached outputs.
    spec = load_spec(write_spec(tmp_path / "again.yaml", {**raw, "seed": 8, "output_dir": str(tmp_path / "again")}))
    examples, _ = transfer_examples(spec, _examples(marker_data["train"]), _examples(marker_data["dev"]))
    again, facts = teacher_outputs(tmp_path / "teacher", examples, spec, ["negative", "positive"], want_features=True)
    assert facts["cache"] == "reused" and again["features"].shape == (360, 32)


def _examples(path) -> Examples:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return Examples([r[0] for r in rows], None, [r[1] for r in rows], [f"{path}:{i + 2}" for i in range(len(rows))],
                    [["negative", "positive"].index(r[1]) for r in rows])


def test_the_loss_is_alpha_ce_plus_t_squared_kl_and_unlabelled_texts_get_only_the_teacher_term():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    teacher = torch.log_softmax(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.2, 0.1]]), dim=-1)
    labels = torch.tensor([0, 1, UNLABELLED])

    class Fixed(torch.nn.Module):
        def forward(self, **batch):
            from types import SimpleNamespace
            return SimpleNamespace(logits=logits, hidden_states=None)

    options = DistillOptions(teacher=["t.jsonl"], alpha=0.3, temperature=2.0)
    loss = distillation_loss(Fixed(), {"teacher_log_probs": teacher, "labels": labels, "input_ids": None}, options)
    T = 2.0
    p = torch.softmax(teacher / T, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(logits / T, -1))).sum(-1)
    ce = torch.nn.functional.cross_entropy(logits[:2], labels[:2], reduction="none")
    expected = (0.3 * torch.cat([ce, torch.zeros(1)]) + 0.7 * T * T * kl).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_label_files_are_checked_row_by_row(tmp_path):
    examples = Examples(["a fine film", "a dull film"], None, [None, None], ["u:2", "u:3"], [UNLABELLED] * 2)
    path = tmp_path / "soft.jsonl"
    path.write_text('{"text": "a fine film", "probabilities": {"negative": 0.2, "positive": 0.8}}\n'
                    '{"text": "a dull film", "probabilities": {"negative": 0.9}}\n')
    with pytest.raises(DataError, match=r"soft.jsonl:2: expected .* every label of \['negative', 'positive'\]"):
        soft_label_file(path, examples, ["negative", "positive"])
    path.write_text('{"text": "a fine film", "probabilities": {"negative": 0.2, "positive": 0.8}}\n')
    with pytest.raises(DataError, match=r"no soft labels for 1 of 2 transfer texts, e.g. u:3: 'a dull film'"):
        soft_label_file(path, examples, ["negative", "positive"])
    path.write_text('{"text": "a fine film", "probabilities": {"negative": 2, "positive": 8}}\n'
                    '{"text": "a dull film", "probabilities": {"negative": 1, "positive": 0}}\n')
    log_probs = soft_label_file(path, examples, ["positive", "negative"])["log_probs"]
    assert torch.allclose(log_probs.exp(), torch.tensor([[0.8, 0.2], [0.0, 1.0]]), atol=1e-6)


def test_unlabelled_texts_that_are_evaluated_or_already_labelled_are_left_out(tmp_path, marker_data):
    unlabeled = tmp_path / "unl.tsv"
    dev_text = marker_data["dev"].read_text().splitlines()[1].split("\t")[0]
    train_text = marker_data["train"].read_text().splitlines()[1].split("\t")[0]
    unlabeled.write_text(f"sentence\n{dev_text}\n{train_text}\na new sentence\n")
    raw = spec_for(tmp_path / "run", marker_data, distill={"teacher": [str(marker_data["flipped"])],
                                                          "unlabeled_file": str(unlabeled)})
    spec = load_spec(write_spec(tmp_path / "s.yaml", raw))
    merged, facts = transfer_examples(spec, _examples(marker_data["train"]), _examples(marker_data["dev"]))
    assert facts == {"unlabeled": 1, "unlabeled_skipped_as_eval_or_labelled": 2}
    assert merged.texts[-1] == "a new sentence" and merged.labels[-1] == UNLABELLED
    raw["distill"]["unlabeled_min_words"] = 4  # "a new sentence" has 3 words
    spec = load_spec(write_spec(tmp_path / "s4.yaml", raw))
    merged, facts = transfer_examples(spec, _examples(marker_data["train"]), _examples(marker_data["dev"]))
    assert facts == {"unlabeled": 0, "unlabeled_skipped_as_eval_or_labelled": 2, "unlabeled_shorter_than_min_words": 1}
    assert len(merged) == 240


def test_self_training_keeps_the_labelled_and_the_surest_unlabelled_texts_of_each_predicted_class():
    texts = ["gold a", "gold b", "u1", "u2", "u3", "u4", "u5"]
    labels = [0, 1] + [UNLABELLED] * 5
    examples = Examples(texts, None, labels, [f"f:{i}" for i in range(7)], labels)
    # the teacher's P(positive): u1 .9, u2 .6, u3 .2, u4 .95, u5 .45 -> positive u4 > u1 > u2; negative u3 > u5
    p = torch.tensor([0.5, 0.5, 0.9, 0.6, 0.2, 0.95, 0.45])
    teaching = Teaching(torch.stack([1 - p, p], 1).log(), None)
    kept, taught, facts = select_confident(examples, teaching, 2, ["negative", "positive"])
    assert kept.texts == ["gold a", "gold b", "u1", "u3", "u4", "u5"]  # u2 (positive, least sure) left out
    assert torch.allclose(taught.log_probs.exp()[:, 1], torch.tensor([0.5, 0.5, 0.9, 0.2, 0.95, 0.45]))
    assert facts == {"selected": {"negative": {"texts": 2, "min_probability": 0.55},
                                  "positive": {"texts": 2, "min_probability": 0.9}}}
    _, _, few = select_confident(examples, teaching, 3, ["negative", "positive"])
    assert few["selected"]["negative"]["texts"] == 2 and few["selected"]["positive"]["texts"] == 3
    assert select_confident(examples, teaching, None, ["negative", "positive"])[0] is examples


@pytest.mark.parametrize("override, message", [
    ({"distill": {"teacher": ["/nowhere/run"]}}, "distill.teacher: expected run folders, .* found nothing at /nowhere/run"),
    ({"distill": {"unlabeled_limit": 5}}, "distill.unlabeled_limit: needs distill.teacher"),
    ({"distill": {"teacher": ["FLIPPED"], "select_per_class": 5}},
     "distill.select_per_class: selects among unlabelled texts; set distill.unlabeled_file"),
    ({"distill": {"teacher": ["FLIPPED"], "unlabeled_min_words": 5}},
     "distill.unlabeled_min_words: selects among unlabelled texts; set distill.unlabeled_file"),
    ({"distill": {"unlabeled_min_words": 5}}, "distill.unlabeled_min_words: needs distill.teacher"),
    ({"distill": {"teacher": ["FLIPPED"]}, "strategy": {"name": "feature_extraction"}},
     "distill.teacher: distillation trains the student's encoder"),
    ({"distill": {"teacher": ["FLIPPED"], "hidden_weight": 1.0}}, "distill.hidden_weight: needs model teachers"),
    ({"model": {"keep_layers": [1, 0]}}, "model.keep_layers: expected block indices in increasing order"),
    ({"model": {"keep_layers": [0, 2]}}, "model.keep_layers: 'tiny:bert' has 2 transformer blocks \\(0..1\\); found 2"),
])
def test_distillation_spec_mistakes_exit_2(tmp_path, marker_data, override, message):
    raw = spec_for(tmp_path / "run", marker_data)
    for key, values in override.items():
        if key == "distill" and values.get("teacher") == ["FLIPPED"]:
            values = {**values, "teacher": [str(marker_data["flipped"])]}
        raw[key] = {**raw.get(key, {}), **values}
    result = run_cli("validate", str(write_spec(tmp_path / "bad.yaml", raw)))
    assert result.returncode == 2, result.stdout + result.stderr
    import re

    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_teacher_must_know_the_student_labels(tmp_path, marker_data):
    raw = spec_for(tmp_path / "run", marker_data, distill={"teacher": [str(marker_data["flipped"])]})
    spec = load_spec(write_spec(tmp_path / "s.yaml", raw))
    with pytest.raises(ConfigError, match="predicts labels"):
        from tlscale.tasks.distillation import _matching_labels

        _matching_labels(["pos", "neg"], ["negative", "positive"], marker_data["flipped"])
    assert spec.distill.enabled


def test_a_prompted_causal_lm_labels_the_transfer_set_and_a_student_learns_from_it(tmp_path, sst2_files):
    """The LLM-to-encoder path: `tlscale fewshot --label` writes soft labels, `distill.teacher` reads them."""
    from tests.conftest import ROOT

    train_file, dev_file = sst2_files
    config = str(ROOT / "configs" / "sst2-fewshot-prompt-tiny-gpt2.yaml")
    soft = tmp_path / "soft.jsonl"
    refused = run_cli("fewshot", config, "--label", str(train_file), "--output", str(train_file))
    assert refused.returncode == 2 and "refusing to overwrite your data" in refused.stderr, refused.stderr
    result = run_cli("fewshot", config, "--label", str(train_file), "--output", str(soft),
                     f"output_dir={tmp_path / 'fs'}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "160 soft labels" in result.stdout
    rows = [json.loads(line) for line in soft.read_text().splitlines()]
    assert len(rows) == 160 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    raw = tiny_spec(tmp_path / "student", train_file, dev_file, distill={"teacher": [str(soft)], "alpha": 0.0},
                    training={"epochs": 1})
    metrics = train(tmp_path, "student", raw)
    gold = [["negative", "positive"][int(line.rsplit("\t", 1)[1])] for line in train_file.read_text().splitlines()[1:]]
    agree = sum(r["label"] == g for r, g in zip(rows, gold)) / len(gold)
    facts = metrics["data"]["distill"]
    assert facts["teachers"] == [{"soft_labels": str(soft)}]
    assert facts["teacher_train_accuracy"] == pytest.approx(agree, abs=1e-4)


def test_a_fewshot_run_folder_teaches_what_its_labelled_file_says(tmp_path, marker_data):
    """Self-training without a soft-label file: distill.teacher names a `tlscale fewshot` run of one seed, which
    the student's process fits again on that seed's examples; its labels are those `fewshot --label` writes."""
    import tlscale.runners  # noqa: F401  (registers the few-shot teacher, as in every training process)

    fewshot = spec_for(tmp_path / "fs", marker_data, fewshot={"method": "linear_probe", "k": 8, "seeds": [3]})
    fs_spec = write_spec(tmp_path / "fs.yaml", fewshot)
    assert run_cli("fewshot", str(fs_spec)).returncode == 0
    assert load_spec(tmp_path / "fs" / "spec.yaml").fewshot.seeds == [3]
    raw = spec_for(tmp_path / "student", marker_data, distill={
        "teacher": [str(tmp_path / "fs")], "unlabeled_file": str(marker_data["unlabeled"]), "select_per_class": 30})
    spec = load_spec(write_spec(tmp_path / "student.yaml", raw))
    examples, _ = transfer_examples(spec, _examples(marker_data["train"]), _examples(marker_data["dev"]))
    outputs, facts = teacher_outputs(tmp_path / "fs", examples, spec, ["positive", "negative"], want_features=False)
    assert facts["fewshot_method"] == "linear_probe" and facts["cache"] == "computed"
    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence\n" + "".join(t + "\n" for t in examples.texts))
    labelled = run_cli("fewshot", str(fs_spec), "--label", str(texts), "--output", str(tmp_path / "soft.jsonl"))
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "soft.jsonl").read_text().splitlines()]
    expected = torch.tensor([[r["probabilities"]["positive"], r["probabilities"]["negative"]] for r in rows])
    assert torch.allclose(outputs["log_probs"].exp(), expected, atol=1e-4)  # in the student's label order
    metrics = train(tmp_path, "student", raw)
    lineage = metrics["data"]["distill"]["teachers"][0]
    assert lineage["cache"] == "reused" and lineage["run_eval"]["accuracy"] == pytest.approx(
        json.loads((tmp_path / "fs" / "metrics.json").read_text())["eval"]["accuracy"])
    assert metrics["train_examples"] == 240 + 60
    # A run of several seeds names no one classifier.
    several = write_spec(tmp_path / "fs2.yaml", {**fewshot, "output_dir": str(tmp_path / "fs2"),
                                                 "fewshot": {**fewshot["fewshot"], "seeds": [3, 4]}})
    assert run_cli("fewshot", str(several)).returncode == 0
    bad = write_spec(tmp_path / "bad.yaml", {**raw, "distill": {**raw["distill"], "teacher": [str(tmp_path / "fs2")]}})
    refused = run_cli("validate", str(bad))
    assert refused.returncode == 2 and "ran seeds [3, 4]; a teacher is one seed's classifier" in refused.stdout + \
        refused.stderr, refused.stdout + refused.stderr
    (tmp_path / "fs2" / "spec.yaml").unlink()  # a few-shot run from before runs kept their spec
    with pytest.raises(ConfigError, match="did not keep its spec.yaml; run `tlscale fewshot` again"):
        teacher_outputs(tmp_path / "fs2", examples, spec, ["positive", "negative"], want_features=False)
