"""Each strategy freezes exactly what it says; discriminative LRs follow the layer order."""
from __future__ import annotations

import pytest
import torch

from tlscale.models import build_classifier
from tlscale.spec.schema import ModelSpec, TrainingSpec
from tlscale.strategies.base import strategy_spec
from tlscale.strategies import STRATEGIES, build_strategy, count_parameters, parameter_groups
from tlscale.models.layers import layer_groups


@pytest.fixture
def model():
    return build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_lists_the_strategies():
    assert {"full", "feature_extraction", "partial", "gradual_unfreeze"} <= set(STRATEGIES.names())


def test_full(model):
    build_strategy(strategy_spec(name="full")).apply(model)
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_feature_extraction_trains_only_the_head(model):
    build_strategy(strategy_spec(name="feature_extraction")).apply(model)
    assert trainable(model) == {"classifier.weight", "classifier.bias"}
    n_train, n_total = count_parameters(model)
    assert n_train == 32 * 2 + 2 and n_total > 900_000


def test_partial_top_k(model):
    build_strategy(strategy_spec(name="partial", trainable_layers=1)).apply(model)
    names = trainable(model)
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)
    assert "classifier.weight" in names and not any("embeddings" in n for n in names)


def test_gradual_unfreeze_by_steps(model):
    strategy = build_strategy(strategy_spec(name="gradual_unfreeze", unfreeze_every_steps=10))
    strategy.apply(model)
    groups = layer_groups(model)
    assert trainable(model) == set(groups.head)
    assert strategy.on_step(model, step=10, epoch=0, steps_per_epoch=100)
    assert trainable(model) == set(groups.head) | set(groups.blocks[1])
    assert not strategy.on_step(model, step=11, epoch=0, steps_per_epoch=100)
    strategy.on_step(model, step=30, epoch=0, steps_per_epoch=100)
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_gradual_unfreeze_by_epoch(model):
    strategy = build_strategy(strategy_spec(name="gradual_unfreeze"))
    strategy.apply(model)
    before = len(trainable(model))
    assert strategy.on_step(model, step=7, epoch=1, steps_per_epoch=7)
    assert len(trainable(model)) > before


def test_layer_groups_cover_every_parameter_once(model):
    groups = layer_groups(model).bottom_to_top()
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert len(groups) == 2 + 2  # embeddings, 2 blocks, head


def test_discriminative_learning_rates(model):
    training = TrainingSpec(lr=1e-3)
    groups = parameter_groups(model, training, strategy_spec(name="full", layer_lr_decay=0.5, head_lr=1e-2))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-2)
    assert lr_of[id(named["backbone.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["backbone.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(5e-4)
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-4)
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd_of[id(named["classifier.bias"])] == 0.0 and wd_of[id(named["classifier.weight"])] > 0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_frozen_parameters_do_not_move_under_adamw(model):
    build_strategy(strategy_spec(name="feature_extraction")).apply(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, TrainingSpec(lr=1e-2), strategy_spec(name="feature_extraction")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(1000, 2000, (4, 8))
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"classifier.weight", "classifier.bias"}


def test_optimizer_groups_hold_trainable_parameters_unless_asked(model):
    """ZeRO refuses a group with nothing trainable; gradual unfreezing needs the frozen ones too."""
    build_strategy(strategy_spec(name="partial", trainable_layers=1)).apply(model)
    spec = strategy_spec(name="partial", trainable_layers=1, layer_lr_decay=0.5)
    groups = parameter_groups(model, TrainingSpec(), spec)
    assert groups and all(g["params"] and all(p.requires_grad for p in g["params"]) for g in groups)
    everything = parameter_groups(model, TrainingSpec(), spec, include_frozen=True)
    assert sum(len(g["params"]) for g in everything) == len(list(model.parameters()))
