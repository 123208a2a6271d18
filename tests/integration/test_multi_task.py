"""multi_task: one tiny encoder trained on SST-2 rows and XQuAD questions at once, through the real CLI; the
task sampling; the spec's mistakes. (Two processes under ZeRO-2: tests/distributed/test_multiprocess.py.)"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import DATA, run_cli, write_spec
from tlscale.data.task_sampling import epoch_counts, schedule, take_batches

XQUAD = DATA / "xquad" / "xquad.en.json"


def mt_spec(output_dir, train_file, dev_file, **sections) -> dict:
    spec = {
        "task": "multi_task", "seed": 3, "output_dir": str(output_dir),
        "model": {"name_or_path": "tiny:bert", "max_length": 96},
        "multi_task": {"sampling": "temperature", "temperature": 2.0, "tasks": [
            {"name": "sst2", "task": "text_classification",
             "data": {"train_file": str(train_file), "eval_file": str(dev_file), "text_column": "sentence",
                      "labels": ["negative", "positive"]}},
            {"name": "xquad", "task": "extractive_qa", "data": {"train_file": str(XQUAD), "limit": 24, "eval_limit": 12},
             "qa": {"train_articles": 32, "doc_stride": 32}}]},
        "training": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "log_every_steps": 1, "report_to": []},
        "eval": {"batch_size": 32},
    }
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


def train(path, *extra):
    result = run_cli("train", str(path), "--no-progress", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --- sampling ---------------------------------------------------------------------------------------------

def test_epoch_counts_follow_the_sampling():
    assert epoch_counts([500, 44], "proportional") == [500, 44]
    tempered = epoch_counts([500, 44], "temperature", 2.0)
    assert sum(tempered) == 544 and tempered[1] == round(544 * 44 ** 0.5 / (500 ** 0.5 + 44 ** 0.5))
    assert epoch_counts([500, 44], "temperature", 1.0) == [500, 44]
    assert epoch_counts([500, 44], "round_robin") == [272, 272]
    assert epoch_counts([1000, 10, 1], "temperature", 1000.0) == [338, 337, 336]  # large T: nearly equal shares
    with pytest.raises(ValueError, match="unknown sampling"):
        epoch_counts([1, 2], "uniform")


def test_schedules_are_seeded_and_round_robin_takes_turns():
    assert schedule([2, 3], "round_robin", "s") == [0, 1, 0, 1, 1]
    a, b = schedule([30, 10], "temperature", "7:tasks"), schedule([30, 10], "temperature", "7:tasks")
    assert a == b and sorted(a) == [0] * 30 + [1] * 10 and a != sorted(a)
    assert schedule([30, 10], "proportional", "8:tasks") != a  # another epoch, another order


def test_a_task_oversampled_beyond_one_pass_gets_fresh_passes():
    passes = []

    def one_pass(p):
        passes.append(p)
        return [[p, 0], [p, 1], [p, 2]]

    assert take_batches(one_pass, 7) == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0]]
    assert passes == [0, 1, 2]


# --- runs -------------------------------------------------------------------------------------------------

def test_one_encoder_two_heads_trains_scores_saves_and_reloads(tmp_path, sst2_files):
    train_file, dev_file = sst2_files
    path = write_spec(tmp_path / "mt.yaml", mt_spec(tmp_path / "run", train_file, dev_file,
                                                   training={"eval_every_steps": 10}))
    result = train(path)
    assert "sst2: eval accuracy" in result.stdout and "xquad: eval exact match" in result.stdout
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    tasks = metrics["eval"]["tasks"]
    assert tasks["sst2"]["num_examples"] == 64 and tasks["xquad"]["num_examples"] == 12
    expected_mean = (tasks["sst2"]["accuracy"] + tasks["xquad"]["f1"] / 100) / 2
    assert metrics["eval"]["task_mean"] == pytest.approx(expected_mean)
    assert metrics["eval"]["sst2/accuracy"] == tasks["sst2"]["accuracy"]
    sampling = metrics["data"]["sampling"]
    one_pass, epoch = sampling["batches_per_pass"], sampling["batches_per_epoch"]
    assert sampling["method"] == "temperature" and one_pass["sst2"] == 20  # 160 rows / 8
    assert epoch["sst2"] < 20 and epoch["xquad"] > one_pass["xquad"]  # the smaller task oversampled
    assert sum(epoch.values()) == sum(one_pass.values()) and metrics["steps"] == 2 * sum(epoch.values())
    assert set(metrics["fixed_batch_loss"]) == {"sst2", "xquad"}
    assert metrics["saved_model_verified"] is True and metrics["best_step"] is not None
    assert (run / "tasks" / "sst2" / "confusion_matrix.png").is_file()
    assert (run / "tasks" / "xquad" / "predictions.jsonl").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/sst2/accuracy" in row and "eval/task_mean" in row for row in rows)

    # each head is its own model folder: plain transformers loads both, with the one trained encoder
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(run / "model" / "sst2", trust_remote_code=True)
    reader = AutoModelForQuestionAnswering.from_pretrained(run / "model" / "xquad")
    assert torch.equal(classifier.backbone.embeddings.word_embeddings.weight,
                       reader.bert.embeddings.word_embeddings.weight)
    assert (run / "model" / "sst2" / "tlscale_spec.yaml").read_text().startswith("task: text_classification")

    # `tlscale eval` of the run reproduces the training's final figures; predict takes a task's folder
    evaluated = run_cli("eval", str(path), "--checkpoint", str(run / "model"), "--output-dir", str(tmp_path / "ev"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["task_mean"] == pytest.approx(metrics["eval"]["task_mean"], abs=1e-6)
    (tmp_path / "in.csv").write_text("sentence\na fine and warm film\n")
    refused = run_cli("predict", "--checkpoint", str(run / "model"), "--input", str(tmp_path / "in.csv"),
                      "--output", str(tmp_path / "p.jsonl"))
    assert refused.returncode == 2 and f"{run / 'model' / 'sst2'}" in refused.stderr
    assert "Traceback" not in refused.stderr
    predicted = run_cli("predict", "--checkpoint", str(run / "model" / "sst2"), "--input", str(tmp_path / "in.csv"),
                        "--output", str(tmp_path / "p.jsonl"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads((tmp_path / "p.jsonl").read_text())["label"] in ("negative", "positive")


def test_a_resumed_multi_task_run_matches_an_uninterrupted_one(tmp_path, sst2_files):
    train_file, dev_file = sst2_files
    common = {"training": {"save_every_steps": 7, "epochs": 2}, "multi_task": {"sampling": "round_robin"}}
    full = write_spec(tmp_path / "full.yaml", mt_spec(tmp_path / "full", train_file, dev_file, **common))
    cut = write_spec(tmp_path / "cut.yaml", mt_spec(tmp_path / "cut", train_file, dev_file, **common))
    train(full)
    train(cut, "--stop-after-steps", "25")  # inside the second epoch
    train(cut, "--resume")
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("full", "cut"))
    assert b["resumed_from_step"] == 25 and a["steps"] == b["steps"]
    assert b["eval"]["task_mean"] == a["eval"]["task_mean"]
    for task in ("sst2", "xquad"):
        x, y = (load_file(str(tmp_path / n / "model" / task / "model.safetensors")) for n in ("full", "cut"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    compared = run_cli("compare", str(tmp_path / "full"), str(tmp_path / "cut"), "--output", str(tmp_path / "cmp"))
    assert compared.returncode == 0, compared.stderr[-2000:]
    header = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0]
    assert all(column in header for column in ("task_mean", "sst2/accuracy", "sst2/f1_macro", "xquad/f1"))


# --- the spec's mistakes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,expected", [
    (lambda s: s.update(data={"train_file": "x.tsv"}), "data: task 'multi_task' takes each task's data"),
    (lambda s: s["multi_task"]["tasks"].pop(), "multi_task.tasks: List should have at least 2 items"),
    (lambda s: s["multi_task"]["tasks"][1].update(name="sst2"), "multi_task.tasks.1.name: expected each name once"),
    (lambda s: s["multi_task"]["tasks"][1].update(task="causal_lm", qa=None),
     "multi_task.tasks.1.task: task 'causal_lm' is scored by"),
    (lambda s: s["multi_task"]["tasks"][1].update(task="masked_lm"),
     "multi_task.tasks.1.qa: the qa section only applies to task 'extractive_qa', not 'masked_lm'"),
    (lambda s: s["multi_task"]["tasks"][1]["qa"].update(doc_strid=32), "multi_task.tasks.1.qa.doc_strid: unknown key"),
    (lambda s: s["multi_task"]["tasks"][0]["data"].pop("train_file"),
     "multi_task.tasks.0.data.train_file: required field is missing"),
    (lambda s: s["multi_task"]["tasks"][0].update(name="sst 2"), "multi_task.tasks.0.name: String should match"),
    (lambda s: s.update(strategy={"name": "lora"}), "strategy 'lora' is not supported with multi_task"),
    (lambda s: s["multi_task"].update(sampling="uniform"), "multi_task.sampling: Input should be"),
])
def test_spec_mistakes_are_named_with_their_line(tmp_path, sst2_files, change, expected):
    from tlscale.errors import ConfigError
    from tlscale.spec.loading import load_spec

    raw = mt_spec(tmp_path / "run", *sst2_files)
    change(raw)
    path = write_spec(tmp_path / "mt.yaml", raw)
    with pytest.raises(ConfigError) as refused:
        load_spec(path)
    assert expected in str(refused.value) and f"{path}:" in str(refused.value), str(refused.value)


def test_validate_exits_2_on_a_task_without_data(tmp_path, sst2_files):
    raw = mt_spec(tmp_path / "run", *sst2_files)
    raw["task"] = "text_classification"
    raw.pop("multi_task")
    path = write_spec(tmp_path / "plain.yaml", raw)
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and f"{path}: data: required field is missing" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_config_validates_and_plans():
    from tests.conftest import ROOT

    config = ROOT / "configs" / "sst2-imdb-minilm-multitask.yaml"
    checked = run_cli("validate", str(config))
    assert checked.returncode == 0 and "8700 train" in checked.stdout, checked.stdout + checked.stderr
    planned = run_cli("plan", str(config), "--gpus", "2")
    assert planned.returncode == 0 and "Recommended" in planned.stdout, planned.stderr[-2000:]
