"""Malformed specs and data: each exits with code 2 and a message naming the field or file:line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_spec
from tests.unit.cli_checks import expect_error


def spec_with(tmp_path, spec, **changes):
    for dotted, value in changes.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return write_spec(tmp_path / "spec.yaml", spec)


DELETE = object()

SPEC_CASES = {
    "unknown top-level key": ({"trainig": {"epochs": 1}}, ["trainig", "Did you mean 'training'"]),
    "unknown nested key": ({"training__epoch": 3}, ["training.epoch", "Did you mean 'epochs'"]),
    "wrong type": ({"training__epochs": "two"}, ["training.epochs", "'two'"]),
    "negative learning rate": ({"training__lr": -0.1}, ["training.lr", "greater than 0"]),
    "unknown strategy": ({"strategy__name": "ful"}, ["strategy.name", "Did you mean 'full'"]),
    "partial without k": ({"strategy__name": "partial"}, ["strategy", "trainable_layers"]),
    "option of another strategy": ({"strategy__trainable_layers": 2}, ["trainable_layers only applies"]),
    "missing model": ({"model": DELETE}, ["model", "required field is missing"]),
    "missing train file": ({"data__train_file": DELETE}, ["data.train_file", "required"]),
    "unknown task": ({"task": "text_clasification"}, ["task", "Did you mean 'text_classification'"]),
    "duplicate labels": ({"data__labels": ["pos", "pos"]}, ["data.labels", "duplicates"]),
    "unknown metric for best": ({"training__metric_for_best": "auc"}, ["metric_for_best", "auc"]),
    "bad pooling": ({"model__pooling": "max"}, ["model.pooling", "'max'"]),
    "bad mixed precision": ({"training__mixed_precision": "fp8"}, ["training.mixed_precision"]),
    "eval fraction out of range": ({"data__eval_fraction": 1.5}, ["data.eval_fraction"]),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_spec_field(base, case):
    tmp_path, spec = base
    changes, fragments = SPEC_CASES[case]
    top = {k: v for k, v in changes.items() if "__" not in k and v is not DELETE and k not in spec}
    spec.update(top)
    path = spec_with(tmp_path, spec, **{k: v for k, v in changes.items() if k not in top})
    expect_error(["validate", path], str(path), *fragments)


def test_errors_carry_yaml_line_and_are_reported_together(tmp_path, base):
    _, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    text = path.read_text().replace("epochs: 2", "epochs: 0").replace("batch_size: 8", "batch_sise: 8")
    path.write_text(text)
    line_of = {key: i + 1 for i, line in enumerate(text.splitlines()) for key in ("epochs", "batch_sise") if key in line}
    output = expect_error(["validate", path], f"{path}:{line_of['epochs']}: training.epochs",
                          f"{path}:{line_of['batch_sise']}: training.batch_sise")
    assert output.count("error:") == 2


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task: text_classification\nmodel:\n  name_or_path: [unclosed\n")
    expect_error(["validate", path], f"{path}:", "not valid YAML")


def test_spec_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    expect_error(["validate", path], f"{path}:1", "expected a mapping")


def test_missing_spec_file(tmp_path):
    expect_error(["validate", tmp_path / "nope.yaml"], "nope.yaml", "cannot read spec file")


def test_override_without_equals(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, "training.epochs"], "training.epochs", "KEY=VALUE")


def test_override_unknown_key(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, "training.epochz=3"], "training.epochz", "Did you mean 'epochs'")


# ---- data ---------------------------------------------------------------------------------------


def data_case(tmp_path, spec, filename, content, **data):
    bad = tmp_path / filename
    bad.write_text(content) if isinstance(content, str) else bad.write_bytes(content)
    spec["data"] = {**spec["data"], "train_file": str(bad), **data}
    return write_spec(tmp_path / "spec.yaml", spec), bad


def test_data_file_not_found(base):
    tmp_path, spec = base
    spec["data"]["train_file"] = str(tmp_path / "missing.tsv")
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)], "missing.tsv", "file not found")


def test_missing_column_suggests(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentense\tlabel\nnice film\t1\n")
    expect_error(["validate", path], f"{bad}:1", "data.text_column 'sentence'", "Did you mean 'sentense'")


def test_empty_text_names_line(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentence\tlabel\ngood\t1\n   \t0\nbad\t0\n")
    expect_error(["validate", path], f"{bad}:3: empty text")


def test_unknown_label_names_line(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentence\tlabel\ngood\t1\nmeh\tneutral\nbad\t0\n")
    expect_error(["validate", path], f"{bad}:3: unknown label 'neutral'", "negative, positive")


def test_all_bad_rows_reported_together(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentence\tlabel\na\t7\nb\t8\nc\t1\nd\tx\n")
    output = expect_error(["validate", path], f"{bad}:2", f"{bad}:3", f"{bad}:5")
    assert output.count("unknown label") == 3


def test_ragged_csv_row(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.csv", 'sentence,label\n"fine, really",1\nbroken,row,0\n')
    expect_error(["validate", path], f"{bad}:3", "expected 2 fields", "found 3")


def test_invalid_jsonl_line(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.jsonl", '{"sentence": "ok", "label": 1}\n{"sentence": "oops"\n')
    expect_error(["validate", path], f"{bad}:2", "invalid JSON")


def test_empty_dataset(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentence\tlabel\n")
    expect_error(["validate", path], str(bad), "empty")


def test_unknown_suffix(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.txt", "sentence\tlabel\nok\t1\n")
    expect_error(["validate", path], str(bad), "data.format")


def test_binary_file(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.csv", b"\xff\xfe\x00\x81garbage\n\x00")
    expect_error(["validate", path], str(bad), "UTF-8")


def test_json_not_a_list(base):
    tmp_path, spec = base
    path, bad = data_case(tmp_path, spec, "t.json", json.dumps({"rows": 3}))
    expect_error(["validate", path], str(bad), "expected a JSON list")


def test_model_directory_missing(base):
    tmp_path, spec = base
    spec["model"]["name_or_path"] = str(tmp_path / "no-model")
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)], "model.name_or_path", "does not exist")


def test_single_label_dataset(base):
    tmp_path, spec = base
    spec["data"].pop("labels")
    path, bad = data_case(tmp_path, spec, "t.tsv", "sentence\tlabel\ngood\t1\nfine\t1\n")
    expect_error(["validate", path], str(bad), "at least 2")


# ---- runtime checks on commands -----------------------------------------------------------------


def test_trainable_layers_above_depth(base):
    tmp_path, spec = base
    spec["strategy"] = {"name": "partial", "trainable_layers": 9}
    expect_error(["train", write_spec(tmp_path / "spec.yaml", spec), "--no-progress"],
                 "strategy.trainable_layers", "at most 2", "found 9")


def test_fp16_on_cpu(base):
    tmp_path, spec = base
    spec["training"]["mixed_precision"] = "fp16"
    expect_error(["train", write_spec(tmp_path / "spec.yaml", spec), "--no-progress"],
                 "training.mixed_precision", "fp16 needs a CUDA GPU")


def test_eval_checkpoint_not_a_model(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["eval", path, "--checkpoint", tmp_path], "--checkpoint", "not a saved model folder")
