"""Encoder baselines' mechanics on a tiny random BERT: k per class from the training data only, balanced
contrastive pairs, the head's C chosen on the training examples, label-description features."""
from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_fewshot_prompting import fewshot_spec
from tlscale.fewshot.encoders import HEAD_C, contrastive_pairs, fit_head
from tlscale.spec.schema import JobSpec


def encoder_method(tmp_path, method: str, **fewshot):
    from tlscale.fewshot import encoders  # noqa: F401
    from tlscale.fewshot.methods import METHODS

    raw = fewshot_spec(tmp_path, method=method, k=3, **fewshot)
    raw["model"] = {"name_or_path": "tiny:bert", "max_length": 32}
    return METHODS.get(method)(JobSpec.model_validate(raw))


def test_contrastive_pairs_are_balanced_and_never_self_pairs():
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    pairs = contrastive_pairs(labels, 6, seed=0)
    assert len(pairs) == 54
    assert sum(t for _, _, t in pairs) == 27  # half same-class
    assert all(a != b and (labels[a] == labels[b]) == (t == 1.0) for a, b, t in pairs)
    assert contrastive_pairs(labels, 6, seed=0) == pairs and contrastive_pairs(labels, 6, seed=1) != pairs


def test_head_c_comes_from_the_training_examples():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (8, 5)) + 2, rng.normal(0, 1, (8, 5)) - 2])
    head, c = fit_head(x, [0] * 8 + [1] * 8, seed=0)
    assert c in HEAD_C and (head.predict(x) == np.array([0] * 8 + [1] * 8)).all()


@pytest.mark.parametrize("method", ["linear_probe", "setfit"])
def test_encoder_baselines_train_on_k_per_class_from_the_training_file(tmp_path, method):
    m = encoder_method(tmp_path, method, setfit={"pairs_per_example": 4, "batch_size": 8})
    chosen = m.training_set(0)
    assert sorted(m.data.train.labels[i] for i in chosen) == [0, 0, 0, 1, 1, 1]
    assert not {m.data.train.texts[i] for i in chosen} & set(m.data.eval.texts)
    assert m.training_set(1) != chosen
    result = m.run(0)
    assert result.metrics["train_examples"] == 6 and result.metrics["num_examples"] == 12
    assert len(result.predictions) == 12 and {"label", "gold", "probabilities"} <= set(result.predictions[0])
    if method == "setfit":
        assert result.metrics["pair_steps"] == 3  # 6 examples x 4 pairs / batch 8


@pytest.mark.parametrize("method", ["linear_probe", "setfit", "zero_shot"])
def test_labelling_a_file_gives_what_the_method_scores_on_the_evaluation_set(tmp_path, method):
    """`tlscale fewshot --label` (a self-training teacher) fits the seed's examples as run() does."""
    m = encoder_method(tmp_path, method, setfit={"pairs_per_example": 4, "batch_size": 8})
    scored = np.array([[row["probabilities"][name] for name in m.label_names] for row in m.run(0).predictions])
    labelled = m.label_probabilities(m.data.eval, 0).numpy()
    assert labelled.shape == (12, 2) and np.allclose(labelled.sum(1), 1, atol=1e-5)
    assert np.allclose(labelled, scored, atol=1e-4)
    if method != "zero_shot":
        assert not np.allclose(m.label_probabilities(m.data.eval, 1).numpy(), labelled, atol=1e-4)  # seed's examples


def test_label_descriptions_add_one_contrast_per_label_but_the_first(tmp_path):
    m = encoder_method(tmp_path, "linear_probe")
    described = m.label_descriptions(m.encoder)
    assert described.shape[0] == 2  # the test spec's verbalizer: bad / good
    plain = encoder_method(tmp_path, "linear_probe", verbalizer=None)
    assert plain.label_descriptions(plain.encoder) is None


def test_large_training_sets_choose_c_on_stratified_folds_not_one_fit_per_example():
    from tlscale.fewshot.encoders import CV_FOLDS, _folds

    labels = np.array([0] * 40 + [1] * 40)
    folds = _folds(labels, seed=0)
    assert len(folds) == CV_FOLDS and sorted(np.concatenate(folds).tolist()) == list(range(80))
    assert all(sorted(labels[f].tolist()) == [0] * 5 + [1] * 5 for f in folds)
    assert len(_folds(labels[:64], seed=0)) == 64  # leave-one-out up to 64 examples
