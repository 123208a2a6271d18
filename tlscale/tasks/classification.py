"""text_classification: sentiment, topic, intent, NLI with text pairs. A pooled backbone + a linear head."""
from __future__ import annotations

import torch

from tlscale.data import build_classification_data, collate, sequential_batches, tokenize
from tlscale.eval import classification_metrics, plot_confusion_matrix, write_predictions
from tlscale.eval.evaluator import score_batches
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows


@TASKS.register("text_classification")
class TextClassification(Task):
    name = "text_classification"
    auto_class = "AutoModelForSequenceClassification"
    metrics = {"accuracy": "max", "f1_macro": "max", "loss": "min", "ece": "min"}
    default_metric = "accuracy"
    caches_features = True

    def prepare(self, tokenizer) -> TaskData:
        spec = self.spec
        data = build_classification_data(spec.data, spec.seed)
        train = tokenize(data.train, tokenizer, spec.model.max_length)
        evaluation = tokenize(data.eval, tokenizer, spec.model.max_length)
        return TaskData(train, evaluation, data.label_names, train.truncated, eval_items=data.eval)

    def build_model(self, data: TaskData, load_options: dict):
        from tlscale.models import build_classifier

        return build_classifier(self.spec.model, data.label_names, load_options)

    def collate(self, dataset, indices, pad_id):
        return collate(dataset, indices, pad_id)

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        spec, eval_set = self.spec, data.eval
        batches = sequential_batches([len(ids) for ids in eval_set.input_ids], spec.eval.batch_size)
        probs = gather_rows(accelerator, lambda b: score_batches(model, eval_set, [b], pad_id, accelerator.device,
                                                                 feature_cache), batches, len(eval_set))
        metrics = classification_metrics(probs, torch.tensor(eval_set.labels), data.label_names,
                                         spec.eval.calibration_bins)
        if write_files and accelerator.is_main_process:
            examples = data.eval_items
            if spec.eval.predictions:
                write_predictions(run.path / "predictions.jsonl", examples.texts, probs, data.label_names,
                                  eval_set.labels, examples.where)
            if spec.eval.confusion_matrix:
                plot_confusion_matrix(run.path / "confusion_matrix.png", metrics["confusion_matrix"],
                                      data.label_names, f"{spec.strategy.name}: accuracy {metrics['accuracy']:.3f}")
        return metrics

    def headline(self, metrics: dict) -> str:
        return (f"eval accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  "
                f"ECE {metrics['ece']:.4f}  ({metrics['num_examples']} examples)")
