"""A task and a strategy defined here, in the test file, registered, and run through the real CLI (train,
eval, compare) without any file of tlscale/ knowing them: the extension points are registrations.

The toy task regresses a sentence's word count from the tiny BERT (a head tlscale has no task for, and a
metric it does not ship); the toy strategy trains only biases and the head (BitFit)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import Field

from tests.conftest import tiny_spec, write_spec
from tests.unit.cli_checks import invoke
from tlscale.data.batching import sequential_batches
from tlscale.eval.metrics import METRICS, register_metric
from tlscale.spec.schema import StrategySpec, TaskOptions
from tlscale.strategies.base import STRATEGIES, Strategy, set_trainable
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows


@dataclass
class Sentences:
    input_ids: list[list[int]]
    targets: list[float]

    def __len__(self) -> int:
        return len(self.input_ids)


class TextLengthOptions(TaskOptions):
    """toy_text_length: how word counts become targets."""
    words_per_unit: float = Field(10.0, gt=0, description="The target is the word count divided by this.")


class TextLength(Task):
    name = "toy_text_length"
    auto_class = "AutoModelForSequenceClassification"
    metrics = ("toy_mae", "loss")
    headline_metrics = ("toy_mae",)
    options, options_key = TextLengthOptions, "toy"  # its own spec section, `toy:`

    def prepare(self, tokenizer) -> TaskData:
        spec = self.spec
        lines = Path(spec.data.train_file).read_text().splitlines()[1:]
        texts = [line.rsplit("\t", 1)[0] for line in lines]
        ids = tokenizer(texts, truncation=True, max_length=spec.model.max_length)["input_ids"]
        targets = [len(text.split()) / spec.toy.words_per_unit for text in texts]
        cut = int(len(texts) * 0.75)
        return TaskData(Sentences(ids[:cut], targets[:cut]), Sentences(ids[cut:], targets[cut:]))

    def build_model(self, data: TaskData, load_options: dict):
        from transformers import AutoModelForSequenceClassification

        from tlscale.models.loading import resolve_model_path

        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(self.spec.model.name_or_path), num_labels=1, problem_type="regression", **load_options)

    def collate(self, dataset, indices, pad_id):
        width = max(len(dataset.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), pad_id)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, :len(dataset.input_ids[i])] = torch.tensor(dataset.input_ids[i])
            mask[row, :len(dataset.input_ids[i])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([dataset.targets[i] for i in indices]),
                "index": torch.tensor(indices)}

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        @torch.no_grad()
        def score(indices):
            batch = self.collate(data.eval, indices, pad_id)
            index, labels = batch.pop("index"), batch.pop("labels")
            predicted = model(**{k: v.to(accelerator.device) for k, v in batch.items()}).logits.squeeze(-1)
            return index, torch.stack([predicted.float().cpu(), labels.float()], dim=1)

        was_training = model.training
        model.eval()
        rows = gather_rows(accelerator, score, sequential_batches([len(i) for i in data.eval.input_ids], 16),
                           len(data.eval))
        model.train(was_training)
        error = rows[:, 0] - rows[:, 1]
        return {"toy_mae": error.abs().mean().item(), "loss": (error ** 2).mean().item(), "num_examples": len(rows)}


class BiasOnlyOptions(StrategySpec):
    norms_too: bool = Field(False, description="Also train the LayerNorm weights.")


class BiasOnly(Strategy):
    """Declares its own options; also uses the hooks a distillation strategy needs: prepare (place a teacher)
    and loss (add its term)."""
    options = BiasOnlyOptions
    calls = {"prepare": 0, "loss": 0}

    def apply(self, model):
        set_trainable(model, {n for n, _ in model.named_parameters() if n.endswith(".bias") or "classifier" in n
                              or (self.spec.norms_too and "LayerNorm.weight" in n)})
        return model

    def prepare(self, accelerator) -> None:
        self.calls["prepare"] += 1

    def loss(self, model, batch, task_loss):
        self.calls["loss"] += 1
        return task_loss(model, batch) + 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)


@pytest.fixture
def registered():
    register_metric("toy_mae", "min", "mean absolute error of the predicted word count (tens of words)")
    TASKS.register("toy_text_length")(TextLength)
    STRATEGIES.register("toy_bias_only")(BiasOnly)
    yield
    for registry, name in ((TASKS, "toy_text_length"), (STRATEGIES, "toy_bias_only"), (METRICS, "toy_mae")):
        registry.unregister(name)


def test_a_task_and_strategy_from_outside_train_evaluate_and_compare_through_the_cli(tmp_path, sst2_files, registered):
    raw = tiny_spec(tmp_path / "run", sst2_files[0], None, task="toy_text_length",
                    strategy={"name": "toy_bias_only", "norms_too": True},
                    training={"epochs": 3, "lr": 3e-3, "eval_every_steps": 15, "keep_best": True},
                    toy={"words_per_unit": 10})
    raw["data"].pop("labels")
    spec = write_spec(tmp_path / "spec.yaml", raw)
    code, output = invoke("validate", spec)
    assert code == 0, output
    code, output = invoke("validate", spec, "strategy.norm_too=true")  # its options are checked like ours
    assert code == 2 and "unknown key 'norm_too'. Did you mean 'norms_too'?" in output, output
    code, output = invoke("validate", spec, "toy.words_per_unit=0")  # and the task's, in its own section
    assert code == 2 and "toy.words_per_unit: Input should be greater than 0" in output, output
    code, output = invoke("validate", spec, "toy.word_per_unit=2")
    assert code == 2 and "Did you mean 'words_per_unit'?" in output, output
    code, output = invoke("train", spec, "--no-progress")
    assert code == 0, output
    assert "toy_mae=" in output and "step 15: " in output  # the headline and the evaluations on the console
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "toy_text_length" and metrics["strategy"] == "toy_bias_only"
    assert metrics["saved_model_verified"] is True
    assert metrics["trainable_params"] < metrics["total_params"] / 10  # biases and the head only
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    eval_lines = sst2_files[0].read_text().splitlines()[1:][120:]
    untrained = sum(len(line.rsplit("\t", 1)[0].split()) / 10 for line in eval_lines) / len(eval_lines)
    assert metrics["eval"]["toy_mae"] < 0.85 * untrained  # it learned (predicting 0 scores `untrained`)
    assert metrics["train_examples"] == 120
    assert BiasOnly.calls == {"prepare": 1, "loss": metrics["steps"]}  # one micro-batch per step here
    assert "norms_too: true" in (tmp_path / "run" / "spec.yaml").read_text()
    assert "words_per_unit: 10.0" in (tmp_path / "run" / "spec.yaml").read_text()

    code, output = invoke("eval", spec, "--checkpoint", tmp_path / "run" / "model", "--output-dir", tmp_path / "eval")
    assert code == 0, output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    assert again["toy_mae"] == pytest.approx(metrics["eval"]["toy_mae"], abs=1e-6)  # one evaluation path

    code, output = invoke("compare", tmp_path / "run", tmp_path / "eval")
    assert code == 0, output
    assert "toy_mae" in output and f"{metrics['eval']['toy_mae']:.4f}" in output
    assert "train/loss" in first
