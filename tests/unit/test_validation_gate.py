"""Validation is the gate: inputs that `validate` passed and `train` then crashed on (or trained on silently) are
refused by `validate` with exit code 2, no traceback, and a message naming the field or file:line."""
from __future__ import annotations

import json
import random
import signal
import time

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_spec, write_spec
from tlscale.cli import app
from tlscale.errors import ConfigError
from tlscale.spec import load_spec

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(map(str, args)))
    return result.exit_code, result.output


def expect_error(args, *fragments):
    code, output = invoke(*args)
    assert code == 2, f"exit {code}, output:\n{output}"
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    return output


def expect_valid(args):
    code, output = invoke(*args)
    assert code == 0, f"exit {code}, output:\n{output}"
    assert "valid" in output
    return output


@pytest.fixture
def base(tmp_path, small_sst2):
    train, dev = small_sst2
    return tmp_path, tiny_spec(tmp_path / "run", train, dev)


def line_of(text: str, fragment: str, occurrence: int = 1) -> int:
    """1-based line of the occurrence-th line containing fragment."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if fragment in line]
    return hits[occurrence - 1]


# ---- spec files: encoding, duplicate keys, YAML 1.1 booleans, aliases, environment ---------------


def test_spec_not_utf8(base):
    tmp_path, spec = base
    path = tmp_path / "spec.yaml"
    text = yaml.safe_dump(spec, sort_keys=False)
    path.write_bytes(text.encode() + "# café\n".encode("latin-1"))
    expect_error(["validate", path], f"{path}: not UTF-8 text", f"at byte {len(text.encode()) + 5}")


def test_duplicate_section_names_both_lines(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    path.write_text(path.read_text() + "training:\n  epochs: 3\n")
    text = path.read_text()
    first, second = line_of(text, "training:"), line_of(text, "training:", 2)
    expect_error(["validate", path], f"{path}:{second}: training: duplicate key (first at line {first})")


def test_duplicate_key_inside_a_section(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    path.write_text(path.read_text().replace("  epochs: 2\n", "  epochs: 2\n  epochs: 5\n"))
    text = path.read_text()
    first, second = line_of(text, "epochs:"), line_of(text, "epochs:", 2)
    expect_error(["validate", path], f"{path}:{second}: training.epochs: duplicate key (first at line {first})")


def test_yes_is_a_string_not_a_number(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    path.write_text(path.read_text().replace("epochs: 2", "epochs: yes"))
    expect_error(["validate", path], f"{path}:{line_of(path.read_text(), 'epochs')}: training.epochs", "'yes'")


@pytest.mark.parametrize("field,section", [("epochs", "training"), ("lr", "training"), ("batch_size", "eval")])
def test_boolean_for_a_number(base, field, section):
    tmp_path, spec = base
    spec[section][field] = True
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path], f"{section}.{field}: expected a number, found true")


def test_boolean_inside_a_list_of_numbers(base):
    tmp_path, spec = base
    spec["fewshot"] = {"seeds": [0, True]}
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)],
                 "fewshot.seeds: expected a number, found true in the list")


def test_yes_no_labels_stay_strings_and_yes_still_switches_a_flag(base):
    tmp_path, spec = base
    train = tmp_path / "yes_no.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"row {i}\t{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    spec["data"] = {**spec["data"], "train_file": str(train), "labels": ["no", "yes"]}
    spec["data"].pop("eval_file")
    path = write_spec(tmp_path / "spec.yaml", spec)
    path.write_text(path.read_text().replace("- 'no'\n", "- no\n").replace("- 'yes'\n", "- yes\n")
                    .replace("tensorboard: false", "tensorboard: yes"))
    assert "- yes\n" in path.read_text() and "tensorboard: yes" in path.read_text()
    job = load_spec(path)
    assert job.data.labels == ["no", "yes"] and job.training.tensorboard is True
    assert "labels ['no', 'yes']" in expect_valid(["validate", path])


def test_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    def hung(*_):
        raise TimeoutError("loading the alias bomb hung")

    previous = signal.signal(signal.SIGALRM, hung)  # the old loader expanded it for minutes: fail, do not hang
    signal.alarm(10)
    try:
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="more than 100,000"):
            load_spec(path)
        assert time.perf_counter() - start < 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    expect_error(["validate", path], f"{path}: aliases (*name) expand the document to", "more than 100,000")


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("task: text_classification\nloop: &x [*x]\n")
    expect_error(["validate", path], f"{path}:2: an alias refers to a node that contains it")


def test_unset_variable_without_default(base, monkeypatch):
    tmp_path, spec = base
    monkeypatch.delenv("TLSCALE_GATE_UNSET", raising=False)
    spec["output_dir"] = "${TLSCALE_GATE_UNSET}/run"
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path], f"{path}:{line_of(path.read_text(), 'output_dir')}: output_dir: "
                 "${TLSCALE_GATE_UNSET} is not set; export it or write ${TLSCALE_GATE_UNSET:-default}")


def test_explicit_empty_default_is_allowed(base, monkeypatch):
    tmp_path, spec = base
    monkeypatch.delenv("TLSCALE_GATE_UNSET", raising=False)
    spec["output_dir"] = "${TLSCALE_GATE_UNSET:-}" + str(tmp_path / "run")
    assert load_spec(write_spec(tmp_path / "spec.yaml", spec)).output_dir == tmp_path / "run"


@pytest.mark.parametrize("field", ["output_dir", "data.train_file", "model.name_or_path"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_path_is_refused(base, field, value):
    tmp_path, spec = base
    *parents, leaf = field.split(".")
    (spec[parents[0]] if parents else spec)[leaf] = value
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)], f"{field}: expected a non-empty path")


def test_overrides_use_the_spec_loader(base):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, "training.epochs=true"], "training.epochs: expected a number, found true")
    expect_error(["validate", path, "training={epochs: 1, epochs: 2}"], "override 'training={epochs: 1, epochs: 2}'",
                 "training.epochs: duplicate key")
    assert load_spec(path, ["data.labels=[no, yes]"]).data.labels == ["no", "yes"]


# ---- numbers ------------------------------------------------------------------------------------


NUMBER_CASES = {
    "lr inf": ("training.lr=.inf", "training.lr: Input should be a finite number"),
    "lr nan": ("training.lr=.nan", "training.lr: Input should be a finite number"),
    "null threshold -inf": ("model.classifier_dropout=-.inf", "model.classifier_dropout: Input should be a finite"),
    "lr absurd": ("training.lr=1.0e+10", "training.lr: Input should be less than or equal to 1"),
    "head lr absurd": ("strategy.head_lr=5", "strategy.head_lr: Input should be less than or equal to 1"),
    "negative seed": ("seed=-1", "seed: Input should be greater than or equal to 0"),
    "huge seed": (f"seed={2**70}", "seed: Input should be less than or equal to 4294967295"),
    "huge fewshot seed": (f"fewshot.seeds=[{2**32}]", "fewshot.seeds.0: Input should be less than or equal to"),
    "absurd epochs": ("training.epochs=1000000", "training.epochs: Input should be less than or equal to 10000"),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_non_finite_and_absurd_numbers(base, case):
    tmp_path, spec = base
    override, message = NUMBER_CASES[case]
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, override], f"{path}", message)


@pytest.mark.parametrize("column", ["text_column", "text_pair_column"])
def test_label_column_equal_to_a_text_column(base, column):
    tmp_path, spec = base
    spec["data"][column] = "label"
    if column == "text_column":
        spec["data"]["text_pair_column"] = "sentence"
    path = write_spec(tmp_path / "spec.yaml", spec)
    line = line_of(path.read_text(), "  label_column:")
    output = expect_error(["validate", path], f"{path}:{line}: data.label_column: expected a column of its own, "
                          f"found the same column as data.{column} ('label')")
    assert "unknown label" not in output


# ---- data files ---------------------------------------------------------------------------------


def with_train_file(tmp_path, spec, name, content, **data):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    spec["data"] = {**spec["data"], "train_file": str(path), **data}
    return write_spec(tmp_path / "spec.yaml", spec), path


ROWS = [("a fine film", "positive"), ("a dull film", "negative")] * 6


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl", "json"])
def test_utf8_bom_is_not_part_of_the_first_column(base, suffix):
    tmp_path, spec = base
    if suffix in ("tsv", "csv"):
        sep = "\t" if suffix == "tsv" else ","
        text = f"sentence{sep}label\n" + "".join(f"{s}{sep}{label}\n" for s, label in ROWS)
    elif suffix == "jsonl":
        text = "".join(json.dumps({"sentence": s, "label": label}) + "\n" for s, label in ROWS)
    else:
        text = json.dumps([{"sentence": s, "label": label} for s, label in ROWS])
    spec_path, _ = with_train_file(tmp_path, spec, f"bom.{suffix}", b"\xef\xbb\xbf" + text.encode())
    expect_valid(["validate", spec_path])


def test_duplicated_header_column(base):
    tmp_path, spec = base
    path, bad = with_train_file(tmp_path, spec, "dup.tsv", "sentence\tlabel\tsentence\nfine\tpositive\tx\n")
    expect_error(["validate", path], f"{bad}:1: column 'sentence' appears twice in the header")


def test_duplicated_key_in_a_jsonl_object(base):
    tmp_path, spec = base
    rows = '{"sentence": "fine", "label": "positive"}\n{"sentence": "a", "sentence": "b", "label": "negative"}\n'
    path, bad = with_train_file(tmp_path, spec, "dup.jsonl", rows)
    expect_error(["validate", path], f"{bad}:2: key 'sentence' appears twice in one object")


def test_duplicated_parquet_column(base):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp_path, spec = base
    bad = tmp_path / "dup.parquet"
    pq.write_table(pa.table([["fine", "dull"], ["positive", "negative"], ["x", "y"]],
                            names=["sentence", "label", "sentence"]), bad)
    spec["data"]["train_file"] = str(bad)
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)],
                 f"{bad}: column 'sentence' appears twice in the header")


CELLS = {"a list": ["fine", "film"], "an object": {"text": "fine"}, "a number (5)": 5, "a boolean (true)": True}


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_text_cell_that_is_not_text(base, suffix):
    tmp_path, spec = base
    records = [{"sentence": s, "label": label} for s, label in ROWS]
    records += [{"sentence": value, "label": "positive"} for value in CELLS.values()]
    spec["data"]["text_pair_column"] = "pair"
    for record in records:
        record["pair"] = "ok"
    records[1]["pair"] = ["not", "text"]
    if suffix == "jsonl":
        content = "".join(json.dumps(r) + "\n" for r in records)
        places = {i: f":{i + 1}:" for i in range(len(records))}
    else:
        content = json.dumps(records)
        places = {i: f": record {i}:" for i in range(len(records))}
    path, bad = with_train_file(tmp_path, spec, f"cells.{suffix}", content)
    expected = [f"{bad}{places[len(ROWS) + i]} column 'sentence': expected text, found {kind}"
                for i, kind in enumerate(CELLS)]
    expect_error(["validate", path], *expected, f"{bad}{places[1]} column 'pair': expected text, found a list")


def test_parquet_text_cell_that_is_a_list(base):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp_path, spec = base
    bad = tmp_path / "cells.parquet"
    pq.write_table(pa.table({"sentence": [["a"], ["b"]], "label": ["positive", "negative"]}), bad)
    spec["data"]["train_file"] = str(bad)
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)],
                 f"{bad}: row 0: column 'sentence': expected text, found a list")


def test_every_training_label_one_class_declared(base):
    tmp_path, spec = base
    path, bad = with_train_file(tmp_path, spec, "one.tsv", "sentence\tlabel\n" + "fine\tpositive\n" * 10)
    expect_error(["validate", path], f"{bad}: every training example has the label 'positive'",
                 "a classifier needs examples of at least 2 classes")


def test_every_training_label_one_class_inferred(base):
    tmp_path, spec = base
    spec["data"].pop("labels")
    path, bad = with_train_file(tmp_path, spec, "one.tsv", "sentence\tlabel\n" + "fine\t1\n" * 10)
    expect_error(["validate", path], f"{bad}: every training example has the label '1'", "at least 2 classes")


def test_one_class_left_after_data_limit(base):
    tmp_path, spec = base
    kept = set(random.Random(spec["seed"]).sample(range(40), 5))  # the rows data.limit=5 keeps (seeded)
    rows = "".join(f"row {i}\t{'positive' if i in kept else 'negative'}\n" for i in range(40))
    path, bad = with_train_file(tmp_path, spec, "limited.tsv", "sentence\tlabel\n" + rows, limit=5)
    expect_error(["validate", path], f"{bad}: every training example has the label 'positive' (after data.limit "
                 "sampled 5 rows)")
    expect_valid(["validate", path, "data.limit=40"])


# ---- other tasks: causal LM and extractive QA ----------------------------------------------------


def test_causal_lm_cell_that_is_not_text(tmp_path):
    rows = [{"prompt": "Say hi", "completion": "hi"}, {"prompt": ["Say", "hi"], "completion": "hi"},
            {"prompt": "Say hi", "completion": {"text": "hi"}}, {"text": 3}]
    bad = tmp_path / "sft.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"task": "causal_lm", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "tiny:gpt2",
            "max_length": 64}, "data": {"train_file": str(bad), "eval_file": str(bad)}}
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)],
                 f"{bad}:2: expected text in prompt and a non-empty completion; column 'prompt' holds a list",
                 f"{bad}:3: expected text in prompt and a non-empty completion; column 'completion' holds an object")


def qa_spec(tmp_path, train_file, **qa):
    return write_spec(tmp_path / "spec.yaml", {
        "task": "extractive_qa", "seed": 7, "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "tiny:bert", "max_length": 96}, "data": {"train_file": str(train_file)},
        "qa": {"doc_stride": 32, "train_articles": 1, **qa}})


def squad(answers_of_second: list, **second) -> dict:
    def qa(qid, answers, **extra):
        return {"id": qid, "question": "Where is Paris?", "answers": answers, **extra}

    paris = [{"text": "France", "answer_start": 12}]
    return {"version": "1.1", "data": [
        {"title": "a", "paragraphs": [{"context": "Paris is in France.",
                                       "qas": [qa("a1", paris), qa("a2", answers_of_second, **second)]}]},
        {"title": "b", "paragraphs": [{"context": "Paris is in France.", "qas": [qa("b1", paris)]}]}]}


def test_squad_v1_question_without_answers(tmp_path):
    bad = tmp_path / "squad.json"
    bad.write_text(json.dumps(squad([])))
    expect_error(["validate", qa_spec(tmp_path, bad)],
                 f"{bad}:data[0].paragraphs[0].qas[1] (id a2): no answers; a SQuAD v1 question needs at least one")


def test_squad_v2_unanswerable_question_is_allowed(tmp_path):
    good = tmp_path / "squad2.json"
    good.write_text(json.dumps(squad([], is_impossible=True)))
    expect_valid(["validate", qa_spec(tmp_path, good, version="v2")])


def test_qa_question_that_is_not_text(tmp_path):
    rows = [{"id": "q1", "question": "Where is Paris?", "context": "Paris is in France.",
             "answers": {"text": ["France"], "answer_start": [12]}},
            {"id": "q2", "question": ["Where", "is", "Paris?"], "context": "Paris is in France.",
             "answers": {"text": ["France"], "answer_start": [12]}}]
    bad = tmp_path / "qa.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expect_error(["validate", qa_spec(tmp_path, bad)], f"{bad}:2 (id q2): question: expected text, found a list")


# ---- model.max_length against the model's positions ---------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_max_length_beyond_the_model_positions(base, arch):
    tmp_path, spec = base
    spec["model"] = {"name_or_path": f"tiny:{arch}", "max_length": 129}
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", spec)],
                 "model.max_length: expected at most 128", "found 129")


def test_max_length_checked_where_every_command_tokenizes():
    from tlscale.models.loading import load_tokenizer
    from tlscale.spec.schema import ModelSpec

    assert load_tokenizer(ModelSpec(name_or_path="tiny:bert", max_length=128)).model_max_length == 128
    with pytest.raises(ConfigError, match=r"model.max_length: expected at most 128 .* found 512"):
        load_tokenizer(ModelSpec(name_or_path="tiny:bert", max_length=512))


def test_max_positions_of_config_shapes():
    from transformers import BertConfig, GPT2Config, RobertaConfig

    from tlscale.models.loading import max_positions

    assert max_positions(BertConfig(max_position_embeddings=512)) == 512
    assert max_positions(GPT2Config(n_positions=1024)) == 1024
    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512


# ---- CLI numbers --------------------------------------------------------------------------------


CLI_CASES = {
    "nproc 0": (["train", "SPEC", "--nproc", "0"], "'--nproc'"),
    "stop after 0 steps": (["train", "SPEC", "--stop-after-steps", "0"], "'--stop-after-steps'"),
    "stop after -3 steps": (["train", "SPEC", "--stop-after-steps", "-3"], "'--stop-after-steps'"),
    "plan 0 gpus": (["plan", "SPEC", "--gpus", "0"], "'--gpus'"),
    "plan -1 gpus": (["plan", "SPEC", "--gpus", "-1"], "'--gpus'"),
    "predict batch 0": (["predict", "--checkpoint", "RUN", "--input", "SPEC", "--output", "OUT", "--batch-size", "0"],
                        "'--batch-size'"),
    "generate 0 tokens": (["generate", "--checkpoint", "RUN", "--prompt", "hi", "--max-new-tokens", "0"],
                          "'--max-new-tokens'"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_numbers_out_of_range(base, case):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    args, option = CLI_CASES[case]
    names = {"SPEC": path, "RUN": tmp_path / "run", "OUT": tmp_path / "out.jsonl"}
    output = expect_error([names.get(a, a) for a in args], f"Invalid value for {option}")
    assert "greater than or equal to 1" in " ".join(output.replace("│", " ").split())  # typer's box wraps lines
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.jsonl").exists()
