"""End-to-end runs of the real CLI on a tiny random BERT and real SST-2 rows (seconds each)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, run_cli, tiny_spec, wait_for, write_spec


def train(spec_path, *extra):
    result = run_cli("train", str(spec_path), "--no-progress", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def spec(tmp_path, small_sst2):
    train_file, dev_file = small_sst2
    raw = tiny_spec(tmp_path / "run", train_file, dev_file,
                    training={"eval_every_steps": 10, "save_every_steps": 10, "log_every_steps": 5})
    return raw


def test_train_writes_the_promised_outputs_and_eval_predict_reuse_them(tmp_path, spec):
    path = write_spec(tmp_path / "spec.yaml", spec)
    result = train(path)
    out = tmp_path / "run"
    assert "eval accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("task", "strategy", "eval", "trainable_params", "total_params", "train_runtime_s", "train_samples_per_s"):
        assert key in metrics
    assert {"accuracy", "f1_macro", "ece", "per_class", "confusion_matrix"} <= set(metrics["eval"])
    assert set(metrics["eval"]["per_class"]) == {"negative", "positive"}
    assert metrics["eval"]["num_examples"] == 64 and metrics["steps"] == 40
    for picture in ("confusion_matrix.png", "reliability.png", "learning_curve.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG" and (out / picture).stat().st_size > 10_000, picture
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 64 and abs(sum(predictions[0]["probabilities"].values()) - 1) < 1e-4
    accuracy = sum(p["label"] == p["gold"] for p in predictions) / 64
    assert accuracy == pytest.approx(metrics["eval"]["accuracy"])
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in row for row in log) and any("eval/accuracy" in row for row in log)
    # the model folder: labels, spec, tokenizer
    model_dir = out / "model"
    assert json.loads((model_dir / "labels.json").read_text())["labels"] == ["negative", "positive"]
    assert (model_dir / "tlscale_spec.yaml").is_file() and (model_dir / "tokenizer.json").is_file()

    evaluated = run_cli("eval", str(path), "--checkpoint", str(model_dir), "--output-dir", str(tmp_path / "ev"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["accuracy"] == pytest.approx(metrics["eval"]["accuracy"])

    inputs = tmp_path / "new.jsonl"
    inputs.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in ["a great film", "dull and tired"]))
    predicted = run_cli("predict", "--checkpoint", str(model_dir), "--input", str(inputs), "--output", str(tmp_path / "p.jsonl"))
    assert predicted.returncode == 0, predicted.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a great film", "dull and tired"]
    assert all(r["label"] in ("negative", "positive") for r in rows)


def test_an_existing_run_is_never_clobbered(tmp_path, spec):
    path = write_spec(tmp_path / "spec.yaml", spec)
    train(path)
    before = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    again = run_cli("train", str(path), "--no-progress")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == before
    resumed = run_cli("train", str(path), "--resume", "--no-progress")
    assert resumed.returncode == 2 and "nothing to resume" in resumed.stderr


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, spec):
    spec["strategy"] = {"name": "gradual_unfreeze", "unfreeze_every_steps": 4, "layer_lr_decay": 0.8}
    spec["training"]["grad_accum_steps"] = 2
    full_spec = write_spec(tmp_path / "full.yaml", {**spec, "output_dir": str(tmp_path / "full")})
    cut_spec = write_spec(tmp_path / "cut.yaml", {**spec, "output_dir": str(tmp_path / "cut")})
    train(full_spec)
    stopped = train(cut_spec, "--stop-after-steps", "13")
    assert "stopped after step 13" in stopped.stdout + stopped.stderr
    assert not (tmp_path / "cut" / "model").exists()
    train(cut_spec, "--resume")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["eval"]["accuracy"] == full["eval"]["accuracy"]
    assert cut["eval"]["loss"] == full["eval"]["loss"]
    assert cut["best_step"] == full["best_step"] and cut["steps"] == full["steps"] == 20
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_blocks_compute_the_eager_losses_and_save_eager_checkpoints(tmp_path, spec):
    """training.compile compiles the blocks in place: the same losses as eager (no dropout, whose random
    streams differ under inductor), a model folder with the eager keys, and a checkpoint an eager run resumes."""
    spec["model"]["dropout"] = 0.0
    spec["training"].update(max_steps=12, save_every_steps=6, eval_every_steps=None, keep_best=False,
                            log_every_steps=2)
    eager = write_spec(tmp_path / "eager.yaml", {**spec, "output_dir": str(tmp_path / "eager")})
    compiled = write_spec(tmp_path / "compiled.yaml", {**spec, "output_dir": str(tmp_path / "compiled"),
                                                        "training": {**spec["training"], "compile": True}})
    train(eager)
    stopped = train(compiled, "--stop-after-steps", "6")
    assert "training.compile: 2 transformer blocks compiled" in stopped.stdout + stopped.stderr
    assert (tmp_path / "compiled" / "checkpoints").is_dir() and not (tmp_path / "compiled" / "model").exists()
    train(eager, "--resume", "output_dir=" + str(tmp_path / "compiled"))  # the compiled run's checkpoint, eagerly

    def losses(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [row["train/loss"] for row in rows if "train/loss" in row]

    assert len(losses("compiled")) == len(losses("eager")) == 6
    assert losses("compiled") == pytest.approx(losses("eager"), rel=1e-3)
    a = load_file(str(tmp_path / "eager" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_checkpoints_are_atomic_and_pruned(tmp_path, spec):
    spec["training"].update(save_every_steps=4, keep_checkpoints=2)
    path = write_spec(tmp_path / "spec.yaml", spec)
    train(path, "--stop-after-steps", "9")
    root = tmp_path / "run" / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    assert steps == ["step-0000008", "step-0000009"]
    assert json.loads((root / "latest.json").read_text())["checkpoint"] == "step-0000009"
    # a crash in the middle of the next save leaves only a temporary folder: resume ignores it
    half = root / ".tmp-step-0000012"
    shutil.copytree(root / "step-0000009", half)
    (half / "model.safetensors").write_bytes(b"truncated")
    result = train(path, "--resume")
    assert "resumed from" in result.stdout + result.stderr and "step-0000009" in result.stdout + result.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_feature_extraction_runs_the_backbone_once_per_example(tmp_path, spec):
    """Counted, not timed: epochs after the first must not touch the backbone."""
    from tlscale.spec import spec_from_dict
    from tlscale import train as run_training
    from tlscale.models import pooled_classifier

    spec["strategy"] = {"name": "feature_extraction"}
    spec["training"].update(epochs=3, eval_every_steps=None, save_every_steps=None)
    calls = []
    original = pooled_classifier.PooledSequenceClassifier.features

    def counting(self, input_ids=None, attention_mask=None, token_type_ids=None):
        calls.append(input_ids.shape[0])
        return original(self, input_ids, attention_mask, token_type_ids)

    pooled_classifier.PooledSequenceClassifier.features = counting
    try:
        result = run_training(spec_from_dict(spec), show_progress=False)
    finally:
        pooled_classifier.PooledSequenceClassifier.features = original
    # every train and eval example exactly once over 3 epochs, plus the 8-example probe that checks the saved model
    assert sum(calls) == 160 + 64 + 8
    assert result.metrics["trainable_params"] == 32 * 2 + 2
    assert len(result.metrics["epoch_times_s"]) == 3


def test_feature_extraction_with_an_mlp_head_trains_only_the_head_and_reloads(tmp_path, spec):
    """model.classifier_hidden: a one-hidden-layer head on the frozen features; the saved model is still one
    plain transformers loads (the class file travels with the weights) and scores as the run did."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tlscale import train as run_training
    from tlscale.spec import spec_from_dict

    spec["strategy"] = {"name": "feature_extraction"}
    spec["model"]["classifier_hidden"] = 16
    spec["training"].update(epochs=2, eval_every_steps=None, save_every_steps=None)
    result = run_training(spec_from_dict(spec), show_progress=False)
    assert result.metrics["trainable_params"] == (32 * 16 + 16) + (16 * 2 + 2)
    assert result.metrics["saved_model_verified"] is True
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir / "model", trust_remote_code=True)
    assert isinstance(model.classifier, torch.nn.Sequential) and model.classifier[0].out_features == 16


def test_feature_extraction_on_several_pooled_layers_trains_the_wider_head_and_reloads(tmp_path, spec):
    """model.pool_layers: the embeddings' and the last block's pooled states, each layer-normalized, side by side;
    the saved model computes the same features under plain transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tlscale import train as run_training
    from tlscale.spec import spec_from_dict

    spec["strategy"] = {"name": "feature_extraction"}
    spec["model"]["pool_layers"] = [0, -1]
    spec["training"].update(epochs=2, eval_every_steps=None, save_every_steps=None)
    result = run_training(spec_from_dict(spec), show_progress=False)
    assert result.metrics["trainable_params"] == 2 * 32 * 2 + 2
    assert result.metrics["saved_model_verified"] is True
    folder = result.output_dir / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    batch = AutoTokenizer.from_pretrained(folder)(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.backbone(**batch, output_hidden_states=True).hidden_states
        expected = torch.cat([torch.nn.functional.layer_norm(states[i][:, 0], (32,)) for i in (0, -1)], dim=-1)
        assert torch.allclose(model.features(**batch), expected, atol=1e-6)  # tiny BERT pools by CLS
        assert model(**batch).logits.shape == (2, 2)


def test_head_l2_shrinks_the_feature_extraction_head_like_a_probe_penalty(tmp_path, spec):
    """strategy.head_l2 adds head_l2/2 x ||W||^2 to the loss: the same run with it ends with a head of smaller
    norm (the biases are not penalized), and the loss logged is the penalized one."""
    from safetensors.torch import load_file as load

    from tlscale import train as run_training
    from tlscale.spec import spec_from_dict

    norms = {}
    for l2 in (None, 1.0):
        raw = {**spec, "output_dir": str(tmp_path / f"l2-{l2}"), "strategy": {"name": "feature_extraction"}}
        raw["training"] = {**spec["training"], "epochs": 3, "eval_every_steps": None, "save_every_steps": None,
                           "weight_decay": 0.0, "lr": 3e-2}
        if l2:
            raw["strategy"]["head_l2"] = l2
        result = run_training(spec_from_dict(raw), show_progress=False)
        weights = load(result.output_dir / "model" / "model.safetensors")
        norms[l2] = float(weights["classifier.weight"].norm())
    assert norms[1.0] < 0.5 * norms[None], norms


def test_head_l2_is_refused_under_zero3_and_for_other_strategies(tmp_path, spec):
    spec["strategy"] = {"name": "feature_extraction", "head_l2": 0.01}
    spec["distributed"] = {"backend": "deepspeed", "zero_stage": 3}
    spec["training"]["keep_best"] = False
    result = run_cli("validate", str(write_spec(tmp_path / "zero3.yaml", spec)))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "strategy.head_l2: ZeRO-3 partitions the head's weights" in result.stdout + result.stderr
    spec["strategy"] = {"name": "full", "head_l2": 0.01}
    spec.pop("distributed")
    result = run_cli("validate", str(write_spec(tmp_path / "full.yaml", spec)))
    assert result.returncode == 2 and "head_l2" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("pool_layers, task, message", [
    ([0, 3], "text_classification", "model.pool_layers: the model has 3 hidden layers .*found 3"),
    ([-1, -1], "text_classification", "model.pool_layers: .*expected each layer once, found \\[-1, -1\\]"),
    ([-1], "masked_lm", "model.pool_layers: an option of the classification head; task 'masked_lm' has none"),
])
def test_pool_layers_mistakes_exit_2(tmp_path, spec, pool_layers, task, message):
    import re

    spec["model"]["pool_layers"] = pool_layers
    if task != "text_classification":
        spec.update(task=task, strategy={"name": "full"})
        spec["data"] = {"train_file": spec["data"]["train_file"], "text_column": "sentence"}
    result = run_cli("validate", str(write_spec(tmp_path / "bad.yaml", spec)))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr


def test_bf16_cosine_split_and_text_pairs_in_process(tmp_path, sst2_rows):
    """Options that change the loop's arithmetic or data path still train and evaluate."""
    from tlscale.spec import spec_from_dict
    from tlscale import train as run_training

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"a": s, "b": s[::-1], "y": int(l)}) + "\n" for s, l in sst2_rows[:120]))
    raw = tiny_spec(tmp_path / "run", path, None,
                    data={"text_column": "a", "text_pair_column": "b", "label_column": "y", "labels": None,
                          "eval_fraction": 0.25},
                    training={"mixed_precision": "bf16", "scheduler": "cosine", "grad_accum_steps": 3, "epochs": 1})
    result = run_training(spec_from_dict(raw), show_progress=False)
    assert result.metrics["eval_examples"] == 30 and result.metrics["train_examples"] == 90
    assert result.metrics["steps"] == 4  # ceil(ceil(90 / 8) / 3)
    assert set(result.metrics["eval"]["per_class"]) == {"0", "1"}


@pytest.mark.parametrize("reuse, backend, kept", [(None, "none", True), (False, "none", False),
                                                   (None, "deepspeed", False), (True, "deepspeed", True)])
def test_a_cpu_run_keeps_freed_memory_for_reuse_except_under_deepspeed_or_when_told(tmp_path, spec, reuse,
                                                                                     backend, kept):
    spec["training"].update(reuse_cpu_memory=reuse, eval_every_steps=None, save_every_steps=None)
    spec["distributed"] = {"backend": backend, **({"zero_stage": 2} if backend == "deepspeed" else {})}
    train(write_spec(tmp_path / "spec.yaml", spec))  # in a process of its own (a launched worker for DeepSpeed)
    memory = json.loads((tmp_path / "run" / "metrics.json").read_text())["memory"]
    assert memory["reuses_freed_cpu_memory"] is kept


def test_cpu_dropout_masks_follow_the_seed_and_torch_own_are_one_option_away(tmp_path, spec):
    spec["training"].update(eval_every_steps=None, save_every_steps=None, log_every_steps=1)

    def losses(name, fast):
        spec["output_dir"] = str(tmp_path / name)
        spec["training"]["fast_dropout"] = fast
        train(write_spec(tmp_path / f"{name}.yaml", spec))
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [row["train/loss"] for row in map(json.loads, rows) if "train/loss" in row]

    fast = losses("fast", True)
    assert len(fast) == 40 and fast == losses("fast-again", True)
    torch_masks = losses("torch", False)
    assert fast[0] != torch_masks[0]  # other masks from the first step on, nothing else changed


def test_a_run_that_fails_to_start_leaves_nothing_behind(tmp_path, spec):
    spec["strategy"] = {"name": "partial", "trainable_layers": 5}
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert run_cli("train", str(path)).returncode == 2
    assert not (tmp_path / "run").exists()
    spec["strategy"] = {"name": "partial", "trainable_layers": 1}
    train(write_spec(tmp_path / "spec.yaml", spec))


def _start(spec_path, *extra):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "tlscale", "train", str(spec_path), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, spec, signal_name):
    """SIGTERM (preemption) checkpoints and exits cleanly; SIGKILL loses only the steps since the
    last checkpoint. Either way --resume ends with the same weights and metrics as an uninterrupted run."""
    import signal as signals

    spec["training"].update(epochs=12, save_every_steps=20, eval_every_steps=None, log_every_steps=1)
    reference = write_spec(tmp_path / "ref.yaml", {**spec, "output_dir": str(tmp_path / "ref")})
    victim = write_spec(tmp_path / "victim.yaml", {**spec, "output_dir": str(tmp_path / "victim")})
    train(reference)
    process = _start(victim)
    latest = tmp_path / "victim" / "checkpoints" / "latest.json"
    assert wait_for(latest.exists), process.communicate()[0]
    process.send_signal(getattr(signals, signal_name))
    output = process.communicate(timeout=120)[0]
    if signal_name == "SIGTERM":
        assert process.returncode == 0 and "stopped after step" in output, output
    else:
        assert process.returncode == -signals.SIGKILL
    assert not (tmp_path / "victim" / "model").exists(), "the run finished before the signal; make it longer"
    resumed = train(victim, "--resume")
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "victim" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_metrics = json.loads((tmp_path / "ref" / "metrics.json").read_text())["eval"]
    assert json.loads((tmp_path / "victim" / "metrics.json").read_text())["eval"]["loss"] == ref_metrics["loss"]


def test_report_to_tensorboard_mlflow_and_wandb_offline(tmp_path, spec, monkeypatch):
    """The trackers users already run, through Accelerate's: each receives the losses and evaluations."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec["training"].update(report_to=["tensorboard", "mlflow", "wandb"], max_steps=6, eval_every_steps=3)
    spec["training"].pop("tensorboard", None)
    train(write_spec(tmp_path / "spec.yaml", spec))
    out = tmp_path / "run"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    import mlflow

    from tlscale.training.tracking import local_mlflow_uri

    client = mlflow.MlflowClient(tracking_uri=local_mlflow_uri(out))
    [experiment] = [e for e in client.search_experiments() if e.name == "tlscale"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.data.params["strategy"] == "full"
    assert {"train/loss", "eval/accuracy", "final/accuracy"} <= set(run.data.metrics)
    [offline] = list((out / "wandb").glob("offline-run-*"))
    assert list(offline.glob("*.wandb"))
    from tlscale.run_folder import is_run_file

    assert all(is_run_file(p.name) for p in out.iterdir())  # --overwrite knows every file the trackers wrote


def test_a_first_run_in_a_new_process_shows_the_user_only_what_they_can_act_on(tmp_path):
    """A fresh interpreter (not the tests' pre-imported zygote, which has already printed the imports' notes):
    no third-party warning (DeepSpeed's accelerator notice, bitsandbytes' missing kernels, deprecations), the
    distribution mode in words, the evaluations during training, and the final headline once."""
    result = run_cli("train", ROOT / "configs" / "tiny-smoke.yaml", "--no-progress", f"output_dir={tmp_path / 'run'}",
                     fresh=True)
    assert result.returncode == 0, result.stdout + result.stderr
    console = result.stdout + result.stderr
    for noise in ("WARNING", "Warning", "Setting accelerator", "gemm_4bit", "kernels", "deprecated", "Traceback"):
        assert noise not in console, console
    assert "1 process, no distribution" in console and "step 10: eval accuracy" in console
    assert sum(line.startswith("eval accuracy") for line in console.splitlines()) == 1, console
