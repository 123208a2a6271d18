"""Augmentation for tiny labelled sets (data.augment): the variants keep their labels and are seeded, guard
words survive, the derived synonym table is what it claims, and a run (training strategy or few-shot encoder
baseline) trains on the variants and is scored on the untouched evaluation set."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT, run_cli, tiny_spec, write_spec
from tests.unit.cli_checks import expect_error
from tlscale.data.augment import PROTECTED, augment_examples
from tlscale.data.classification import Examples
from tlscale.models.synonyms import derive_synonyms
from tlscale.spec.schema import AugmentSpec

TABLE = {"good": ["excellent"], "movie": ["film"], "funny": ["hilarious", "amusing"], "actors": ["performers"]}


def sentences() -> Examples:
    texts = ["the movie is not funny , but the actors are good", "a good movie", "never funny and rarely good",
             "one of the best films of the year"]
    return Examples(texts, None, [0, 1, 0, 1], [f"train.tsv:{i + 2}" for i in range(4)], [0, 1, 0, 1])


def test_variants_keep_labels_are_seeded_and_spare_guard_words():
    options = AugmentSpec(copies=8, rate=0.3)
    merged, origins, facts = augment_examples(sentences(), options, seed=3, synonyms=TABLE)
    again, _, _ = augment_examples(sentences(), options, seed=3, synonyms=TABLE)
    other, _, _ = augment_examples(sentences(), options, seed=4, synonyms=TABLE)
    assert merged.texts == again.texts and merged.texts != other.texts  # seeded by (seed, example, copy)
    assert merged.texts[:4] == sentences().texts and facts["variants"] == len(merged) - 4 > 12
    assert set(facts["by_operation"]) == {"synonym", "insert", "swap", "delete"} and all(facts["by_operation"].values())
    originals = sentences()
    for text, label, origin, where in zip(merged.texts, merged.labels, origins, merged.where):
        assert label == originals.labels[origin] and where.startswith(originals.where[origin])
        guards = [w for w in originals.texts[origin].split() if w in PROTECTED]
        assert [w for w in text.split() if w in PROTECTED] == guards or "swap" in where  # never dropped
        assert sorted(w for w in text.split() if w in PROTECTED) == sorted(guards)
    variants = merged.texts[4:]
    assert len(set(variants)) == len(variants) and not set(variants) & set(originals.texts)
    swapped = [t for t, w in zip(merged.texts, merged.where) if "swap" in w]
    assert swapped and all(sorted(t.split()) == sorted(originals.texts[o].split())
                           for t, w, o in zip(merged.texts, merged.where, origins) if "swap" in w)
    replaced = [t for t, w in zip(merged.texts, merged.where) if "synonym variant" in w]
    assert any(s in t for t in replaced for s in ("excellent", "film", "hilarious", "amusing", "performers"))
    off, origins_off, facts_off = augment_examples(sentences(), AugmentSpec(), seed=3, synonyms=TABLE)
    assert off.texts == sentences().texts and facts_off == {} and origins_off == [0, 1, 2, 3]


class Vocab:
    def __init__(self, words):
        self.words = words

    def get_vocab(self):
        return {w: i for i, w in enumerate(self.words)}

    def __len__(self):
        return len(self.words)


def test_derived_synonyms_are_close_mutual_neighbours_of_other_stems():
    words = ["great", "terrific", "greater", "movie", "film", "the", "not", "##ing", "xyz", "odd"]
    vectors = torch.zeros(len(words), 4)
    vectors[0] = torch.tensor([1.0, 0.1, 0, 0])    # great
    vectors[1] = torch.tensor([1.0, 0.2, 0, 0])    # terrific: close to great
    vectors[2] = torch.tensor([1.0, 0, 0.3, 0])    # greater: close to great (0.95), but the same stem
    vectors[3] = torch.tensor([0, 1.0, 0.1, 0])    # movie
    vectors[4] = torch.tensor([0, 1.0, 0.2, 0])    # film
    vectors[5] = torch.tensor([0, 1.0, 0.15, 0])   # the: a stopword, never a synonym
    vectors[6] = torch.tensor([1.0, 0.1, 0, 0])    # not: protected, never a synonym
    vectors[7] = torch.tensor([0, 1.0, 0.1, 0])    # a word piece
    vectors[8] = torch.tensor([0, 0, 1.0, 0])      # xyz: far from everything
    vectors[9] = torch.tensor([0, 0, 0.7, 0.7])    # odd: cosine 0.71 to xyz
    table = derive_synonyms(Vocab(words), vectors, min_similarity=0.95)
    assert table == {"great": ["terrific"], "terrific": ["great"], "movie": ["film"], "film": ["movie"]}
    assert "odd" in derive_synonyms(Vocab(words), vectors, min_similarity=0.5)["xyz"]


def test_a_tiny_run_trains_on_variants_and_scores_the_untouched_eval_set(tmp_path, sst2_files):
    train_file, dev_file = sst2_files
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps(TABLE))
    raw = tiny_spec(tmp_path / "run", train_file, dev_file, training={"epochs": 1},
                    data={"per_class": 8, "augment": {"copies": 3, "synonyms_file": str(synonyms)}})
    result = run_cli("train", str(write_spec(tmp_path / "aug.yaml", raw)), "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    facts = metrics["data"]["augment"]
    assert facts["labelled"] == 16 and 16 <= facts["variants"] <= 16 * 3
    assert facts["by_operation"]["swap"] >= 12  # (synonym and insert only change texts with words in TABLE)
    assert metrics["train_examples"] == 16 + facts["variants"] and metrics["eval_examples"] == 64

    # The derived table (the model's embeddings) when no file is given; the same seed, the same variants.
    raw["data"]["augment"] = {"copies": 2}
    raw["output_dir"] = str(tmp_path / "derived")
    result = run_cli("train", str(write_spec(tmp_path / "derived.yaml", raw)), "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    derived = json.loads((tmp_path / "derived" / "metrics.json").read_text())["data"]["augment"]
    assert derived["synonym_words"] > 0 and derived["labelled"] == 16


@pytest.mark.parametrize("augment,message", [
    ({"copies": 2, "operations": ["shuffle"]}, "data.augment.operations"),
    ({"copies": 2, "rate": 0.9}, "data.augment.rate"),
    ({"copies": 2, "synonyms_file": "/nonexistent/syn.json"}, "synonyms_file"),
])
def test_augment_mistakes_exit_2(tmp_path, sst2_files, augment, message):
    raw = tiny_spec(tmp_path / "run", sst2_files[0], sst2_files[1], data={"augment": augment})
    expect_error(["validate", write_spec(tmp_path / "aug.yaml", raw)], message)


def test_augmentation_is_refused_where_nothing_trains_on_it(tmp_path, sst2_files):
    raw = tiny_spec(tmp_path / "run", sst2_files[0], data={"augment": {"copies": 2}}, task="masked_lm")
    raw["data"] = {"train_file": str(sst2_files[0]), "text_column": "sentence", "augment": {"copies": 2}}
    expect_error(["validate", write_spec(tmp_path / "mlm.yaml", raw), "--no-check-data"],
                 "data.augment: label-preserving augmentation is for task text_classification")


@pytest.mark.slow
def test_linear_probe_trains_on_variants_with_their_originals_in_one_fold(tmp_path):
    """The real MiniLM, 8 per class, 2 variants each: the head's leave-one-out holds an example out with its
    variants (else C would be chosen on near-copies of the training rows)."""
    out = tmp_path / "probe"
    result = run_cli("fewshot", str(ROOT / "configs" / "sst2-minilm-linear-probe.yaml"), f"output_dir={out}",
                     "fewshot.k=8", "fewshot.seeds=[0]", "data.eval_limit=200", "data.augment.copies=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    seed = metrics["seeds"]["0"]
    assert seed["train_examples"] == 16 and 16 < seed["augmented_examples"] <= 32
    assert metrics["eval"]["num_examples"] == 200  # the evaluation set is never augmented


def test_grouped_folds_hold_out_an_example_with_its_variants():
    import numpy as np

    from tlscale.fewshot.encoders import _folds

    labels = np.array([0, 1, 0, 1, 0, 0, 1, 1])
    groups = np.array([0, 1, 2, 3, 0, 2, 1, 3])  # rows 4..7 are variants of rows 0..3
    assert [list(f) for f in _folds(labels, 0, groups)] == [[0, 4], [1, 6], [2, 5], [3, 7]]
    many = np.repeat(np.arange(100), 3)
    folds = _folds(np.repeat(np.arange(100) % 2, 3), 0, many)
    assert sorted(np.concatenate(folds).tolist()) == list(range(300))
    assert all(len({int(many[i]) for i in fold}) * 3 == len(fold) for fold in folds)  # whole groups only
