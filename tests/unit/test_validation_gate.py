"""Validation is the gate: inputs that `validate` passed and `train` then crashed on (or trained on silently) are
refused by `validate` with exit code 2, no traceback, and a message naming the field or file:line."""
from __future__ import annotations

import json
import random
import signal
import time

import pytest
import yaml

from tests.conftest import write_spec
from tests.unit.cli_checks import expect_error, invoke
from tlscale.errors import ConfigError, DataError
from tlscale.spec import load_spec


def expect_valid(args):
    code, output = invoke(*args)
    assert code == 0, f"exit {code}, output:\n{output}"
    assert "valid" in output
    return output


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
                    .replace("report_to: []", "tensorboard: yes"))
    assert "- yes\n" in path.read_text() and "tensorboard: yes" in path.read_text()
    job = load_spec(path)
    assert job.data.labels == ["no", "yes"] and job.training.report_to == ["tensorboard"]  # the older spelling
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
    "another task's section": ("lm.packing=true", "lm: the lm section only applies to task 'causal_lm', not "
                                                  "'text_classification'"),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_non_finite_and_absurd_numbers(base, case):
    tmp_path, spec = base
    override, message = NUMBER_CASES[case]
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, override], f"override '{override}'", message)  # blamed on the override


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


# ---- extractive QA windows: questions that leave no room for the context ------------------------


PARIS = "Paris is the capital of France and its largest city, on the Seine. " * 12  # several windows at 96 tokens
LONG_QUESTION = "Which city " + "on the river that flows through the north of the country " * 10 + "is the capital?"


def qa_rows(path, questions: dict[str, str], answers: dict | None = None):
    rows = [{"id": qid, "question": question, "context": PARIS,
             "answers": (answers or {}).get(qid, {"text": ["Paris"], "answer_start": [0]})}
            for qid, question in questions.items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def flat_qa_spec(tmp_path, train_file, max_length=96, **qa):
    return write_spec(tmp_path / "spec.yaml", {
        "task": "extractive_qa", "seed": 7, "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "tiny:bert", "max_length": max_length},
        "data": {"train_file": str(train_file), "eval_file": str(train_file)}, "qa": {"doc_stride": 32, **qa}})


def question_tokens(text: str) -> int:
    from tlscale.models import load_tokenizer
    from tlscale.spec.schema import ModelSpec

    return len(load_tokenizer(ModelSpec(name_or_path="tiny:bert")).tokenize(text))


def test_question_longer_than_max_length(tmp_path):
    """Was `Exception: Truncation error: Sequence to truncate too short` from tokenizers, with a traceback."""
    bad = qa_rows(tmp_path / "qa.jsonl", {"q1": "What is the capital of France?", "q2": LONG_QUESTION})
    n = question_tokens(LONG_QUESTION)
    assert n > 96
    output = expect_error(["validate", flat_qa_spec(tmp_path, bad)],
                          f"{bad}:2 (id q2): the question is {n} tokens; model.max_length 96 minus the question and 3 "
                          "special tokens leaves 0 tokens of context per window, which must be more than "
                          "qa.doc_stride (32); raise model.max_length, lower qa.doc_stride or shorten the question")
    assert "(id q1)" not in output


def test_doc_stride_larger_than_the_room_left_by_the_question(tmp_path):
    """max_length 24, doc_stride 4 and a 19-token question leave 2 context tokens a window: was a tokenizers
    PanicException ('`stride` must be strictly less than `max_len=2`')."""
    question = "Which city on the river Seine is the capital of the country of France, and its largest?"
    n = question_tokens(question)
    left = 24 - 3 - n
    assert 0 < left <= 4, n
    bad = qa_rows(tmp_path / "qa.jsonl", {"q1": "Capital?", "q2": question})
    output = expect_error(["validate", flat_qa_spec(tmp_path, bad, max_length=24, doc_stride=4)],
                          f"{bad}:2 (id q2): the question is {n} tokens; model.max_length 24 minus the question and 3 "
                          f"special tokens leaves {left} tokens of context per window, which must be more than "
                          "qa.doc_stride (4)")
    assert "(id q1)" not in output and "PanicException" not in output
    expect_valid(["validate", flat_qa_spec(tmp_path, bad, max_length=24, doc_stride=left - 1)])


def test_long_question_with_a_context_that_fits_needs_no_stride(tmp_path):
    from tlscale.data.qa import Question
    from tlscale.data.qa_windows import make_windows
    from tlscale.models import load_tokenizer
    from tlscale.spec.schema import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(name_or_path="tiny:bert", max_length=24))
    question = "Which city on the river Seine is the capital of the country of France, and its largest?"
    fits = Question("q1", question, "Paris.", ["Paris"], [0], -1, "q:1")
    assert 24 - 3 - question_tokens(question) <= 4  # no room for a stride of 4, but no need for one either:
    assert question_tokens(question) + question_tokens("Paris.") + 3 <= 24  # the whole context fits
    windows = make_windows([fits], tokenizer, 24, 4)
    assert len(windows) == 1 and windows.start_positions == windows.end_positions != [0]
    with pytest.raises(DataError, match="q:1: the question is 19 tokens"):
        make_windows([Question("q1", question, PARIS, ["Paris"], [0], -1, "q:1")], tokenizer, 24, 4)


def test_long_question_is_a_data_error_where_predict_windows(tmp_path):
    """`tlscale predict` on a QA checkpoint windows its input with the trained max_length and doc_stride."""
    from tlscale.models.loading import build_qa_model, load_tokenizer
    from tlscale.spec.schema import ModelSpec

    checkpoint = tmp_path / "model"
    model_spec = ModelSpec(name_or_path="tiny:bert", max_length=24)
    build_qa_model(model_spec).save_pretrained(checkpoint)
    load_tokenizer(model_spec).save_pretrained(checkpoint)
    (checkpoint / "tlscale_spec.yaml").write_text(yaml.safe_dump(
        {"task": "extractive_qa", "model": {"name_or_path": "tiny:bert", "max_length": 24}, "qa": {"doc_stride": 4}}))
    asked = tmp_path / "asked.jsonl"
    asked.write_text(json.dumps({"id": "p1", "question": "Capital?", "context": PARIS}) + "\n"
                     + json.dumps({"id": "p2", "question": LONG_QUESTION, "context": PARIS}) + "\n")
    expect_error(["predict", "--checkpoint", checkpoint, "--input", asked, "--output", tmp_path / "answers.jsonl"],
                 f"{asked}:2 (id p2): the question is {question_tokens(LONG_QUESTION)} tokens",
                 "more than qa.doc_stride (4)")
    assert not (tmp_path / "answers.jsonl").exists()
    assert invoke("predict", "--checkpoint", checkpoint, "--input", qa_rows(tmp_path / "ok.jsonl", {"p1": "Capital?"}),
                  "--output", tmp_path / "answers.jsonl")[0] == 0


def test_windows_cover_the_context_whatever_the_padding_side():
    """A left-padding tokenizer (Llama's) used to window the question and keep the whole context: a truncation
    error on any context longer than max_length."""
    from tlscale.data.qa import Question
    from tlscale.data.qa_windows import make_windows
    from tlscale.models import load_tokenizer
    from tlscale.spec.schema import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(name_or_path="tiny:bert", max_length=64))
    question = Question("q1", "What is the capital?", PARIS, ["Paris"], [0], -1, "q:1")
    right = make_windows([question], tokenizer, 64, 16)
    tokenizer.padding_side = "left"
    left = make_windows([question], tokenizer, 64, 16)
    assert len(left) > 1 and left.input_ids == right.input_ids and left.offsets == right.offsets
    assert left.start_positions[0] > 0


# ---- SQuAD v1 vs v2: unanswerable questions need qa.version v2 -----------------------------------


def test_flat_rows_without_answers_need_v2(tmp_path):
    empty = {"text": [], "answer_start": []}
    bad = qa_rows(tmp_path / "qa.jsonl", {"q1": "Capital?", "q2": "Largest city?", "q3": "River?"},
                  answers={"q2": empty, "q3": empty})
    output = expect_error(["validate", flat_qa_spec(tmp_path, bad)],
                          f"{bad}:2 (id q2): no answers (an unanswerable question), but qa.version is v1",
                          f"{bad}:3 (id q3): no answers", "set qa.version: v2 for unanswerable questions")
    assert "(id q1)" not in output
    expect_valid(["validate", flat_qa_spec(tmp_path, bad, version="v2")])


def test_squad_is_impossible_needs_v2(tmp_path):
    bad = tmp_path / "squad2.json"
    bad.write_text(json.dumps(squad([], is_impossible=True)))
    expect_error(["validate", qa_spec(tmp_path, bad)],
                 f"{bad}:data[0].paragraphs[0].qas[1] (id a2): no answers (an unanswerable question), but qa.version "
                 "is v1", "set qa.version: v2")
    expect_error(["validate", qa_spec(tmp_path, bad, version="v1")], "(id a2): no answers", "set qa.version: v2")


# ---- weight decay and a diverged loss ------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.5", "1000"])
def test_weight_decay_above_one(base, value):
    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, f"training.weight_decay={value}"],
                 "training.weight_decay: Input should be less than or equal to 1")
    expect_valid(["validate", path, "training.weight_decay=0.1", "--no-check-data"])


def test_diverged_loss_names_every_usual_cause():
    from tlscale.training.loop import TrainingDiverged, _check_finite

    _check_finite(2.5, 7, 1e-3)
    with pytest.raises(TrainingDiverged) as caught:
        _check_finite(float("nan"), 7, 1e-3)
    message = str(caught.value)
    assert message.startswith("training: the training loss became nan at step 7 (learning rate 0.001)")
    for cause in ("training.lr", "training.weight_decay", "training.warmup_ratio", "data"):
        assert cause in message
    with pytest.raises(TrainingDiverged, match=r"at step 1 .*before any update: check the data") as caught:
        _check_finite(float("inf"), 1, 1e-3)
    assert "training.lr" not in str(caught.value)  # no update has happened: not the learning rate


# ---- LoRA target modules checked by validate, on the model's skeleton ----------------------------


@pytest.fixture
def no_weights_read(monkeypatch):
    """Reading pretrained weights fails: validate must check the targets without them."""
    from transformers import PreTrainedModel

    def refuse(*args, **kwargs):
        raise AssertionError("validate read the model's weights")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_lora_targets_that_are_not_modules(base, no_weights_read, strategy):
    tmp_path, spec = base
    spec["strategy"] = {"name": strategy, "target_modules": ["q_proj", "query"]}
    if strategy == "qlora":
        pytest.importorskip("bitsandbytes")
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, "--no-check-data"], f"{path}:{line_of(path.read_text(), 'target_modules')}: "
                 "strategy.target_modules: ['q_proj'] are not modules of this model ('bert'); layers LoRA can adapt "
                 "here: dense, key", "query, token_type_embeddings, value")


def test_lora_target_that_is_a_block_not_a_layer(base, no_weights_read):
    """PEFT raised `ValueError: Target module BertAttention(...) is not supported` once the model was built."""
    tmp_path, spec = base
    spec["strategy"] = {"name": "lora", "target_modules": ["attention"]}
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, "--no-check-data"], "strategy.target_modules: 'attention' names BertAttention, "
                 "which LoRA cannot adapt", "layers LoRA can adapt here: dense, key")
    spec["strategy"] = {"name": "lora"}
    path = write_spec(tmp_path / "spec.yaml", spec)  # the same target as an override: no line to name
    expect_error(["validate", path, "--no-check-data", "strategy.target_modules=[attention]"],
                 "override 'strategy.target_modules=[attention]': strategy.target_modules: 'attention' names "
                 "BertAttention")


@pytest.mark.parametrize("targets", [None, ["query", "value"], ["self.query"]])
def test_lora_targets_that_exist_are_valid_without_weights(base, no_weights_read, targets):
    tmp_path, spec = base
    spec["strategy"] = {"name": "lora", **({"target_modules": targets} if targets else {})}
    expect_valid(["validate", write_spec(tmp_path / "spec.yaml", spec), "--no-check-data"])


def test_lora_apply_refuses_a_block_before_peft_does():
    from tlscale.models import build_classifier
    from tlscale.spec.schema import ModelSpec
    from tlscale.strategies.base import strategy_spec
    from tlscale.strategies import build_strategy

    model = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])
    with pytest.raises(ConfigError, match="'attention' names BertAttention, which LoRA cannot adapt"):
        build_strategy(strategy_spec(name="lora", target_modules=["attention"])).apply(model)
    adapted = build_strategy(strategy_spec(name="lora", target_modules=["self.query"])).apply(model)
    assert any("query.lora_A" in name for name, _ in adapted.named_parameters())


# ---- validate reads the spec before torch: a typo comes back at once ------------------------------


def test_spec_loads_without_torch(base):
    import subprocess
    import sys

    tmp_path, spec = base
    good = write_spec(tmp_path / "spec.yaml", spec)
    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text().replace("epochs:", "epocs:"))
    check = ("import sys\nfrom tlscale.cli import app\nfrom typer.testing import CliRunner\n"
             f"result = CliRunner().invoke(app, ['validate', {str(typo)!r}])\n"
             "print(result.exit_code, result.output)\n"
             "from tlscale.spec import load_spec\n"
             f"load_spec({str(good)!r}, ['training.metric_for_best=accuracy'])\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 ") and "training.epocs: unknown key 'epocs'" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("[]"), done.stdout  # nothing heavy imported for the spec
    assert time.perf_counter() - start < 30


def test_builtin_tables_are_the_registries():
    import tlscale.fewshot.encoders  # noqa: F401  (registers the encoder methods)
    from tlscale.data.readers import READERS
    from tlscale.fewshot.methods import METHODS
    from tlscale.fewshot.selection import SELECTIONS
    from tlscale.spec.schema import BUILTIN_FEWSHOT_METHODS, BUILTIN_FORMATS, BUILTIN_SELECTIONS

    assert set(BUILTIN_FORMATS) == set(READERS.names())
    assert set(BUILTIN_FEWSHOT_METHODS) == set(METHODS.names())
    assert set(BUILTIN_SELECTIONS) == set(SELECTIONS.names())


@pytest.mark.parametrize("override,message", [
    ("task=text_classificaton", "task: unknown task 'text_classificaton'. Did you mean 'text_classification'? "
                                "Available: causal_lm, extractive_qa, masked_lm, multi_task, text_classification"),
    ("training.metric_for_best=f1", "training.metric_for_best: expected one of ['accuracy', 'auto', 'ece', "
                                    "'f1_macro', 'loss'], found 'f1'"),
    ("strategy.name=lorra", "strategy.name: unknown strategy 'lorra'. Did you mean 'lora'? Available: "
                            "feature_extraction, full, gradual_unfreeze, lora, partial, qlora"),
])
def test_task_strategy_and_metric_mistakes_named_as_before(base, override, message):
    """Worded alike whether the registries were imported (here) or not (the table in tlscale.spec.schema)."""
    import subprocess
    import sys

    tmp_path, spec = base
    path = write_spec(tmp_path / "spec.yaml", spec)
    expect_error(["validate", path, override], message)
    check = (f"from tlscale.spec import load_spec\ntry:\n    load_spec({str(path)!r}, [{override!r}])\n"
             "except Exception as exc:\n    print(exc)\nimport sys\nprint('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert message in " ".join(done.stdout.split()) and done.stdout.rstrip().endswith("False"), done.stdout
