"""text_classification: sentiment, topic, intent, NLI with text pairs. A pooled backbone + a linear head."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tlscale.data import build_classification_data, collate, lengths, read_examples, sequential_batches, tokenize
from tlscale.data.classification import fingerprint
from tlscale.errors import ConfigError
from tlscale.eval import (classification_metrics, plot_confusion_matrix, plot_reliability, reliability_bins,
                          write_predictions)
from tlscale.eval.evaluator import score_batches
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows
from tlscale.tasks.distillation import (DistillOptions, TransferSet, collate_with_teacher, distillation_loss,
                                        select_confident, teach, transfer_examples, transfer_set)

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


def augment(spec, examples, tokenizer):
    """EDA variants of the labelled examples (tlscale/data/augment.py), synonyms from the model's embeddings."""
    from tlscale.data.augment import augment_examples
    from tlscale.models.synonyms import input_embeddings, synonym_table

    table = synonym_table(spec.data.augment, tokenizer, lambda: input_embeddings(spec.model.name_or_path))
    augmented, _, facts = augment_examples(examples, spec.data.augment, spec.seed, table)
    return augmented, facts


DIRECT_READ_LIMIT = 20_000  # data.limit up to this: the file is read directly, only the sample tokenized


@TASKS.register("text_classification")
class TextClassification(Task):
    name = "text_classification"
    auto_class = "AutoModelForSequenceClassification"
    metrics = ("accuracy", "f1_macro", "loss", "ece")
    headline_metrics = ("accuracy", "f1_macro", "ece")
    caches_features = True
    options = DistillOptions  # `distill:` a teacher's soft labels (tlscale/tasks/distillation.py)
    options_key = "distill"

    def prepare(self, tokenizer) -> TaskData:
        spec = self.spec
        data = build_classification_data(spec.data, spec.seed, self.reader(tokenizer))
        notes = {"eval_sha256": fingerprint(data.eval, data.label_names)}
        examples = data.train
        if spec.data.augment.copies:
            examples, notes["augment"] = augment(spec, examples, tokenizer)
        if spec.distill.enabled:
            examples, facts = transfer_examples(spec, examples, data.eval)
            teaching, lineage = teach(examples, spec, data.label_names)
            examples, teaching, chosen = select_confident(examples, teaching, spec.distill.select_per_class,
                                                          data.label_names)
            notes["distill"] = {**facts, **lineage, **chosen, "labelled": len(data.train),
                                "transfer_texts": len(examples)}
        train = tokenize(examples, tokenizer, spec.model.max_length)
        if spec.distill.enabled:
            train = transfer_set(train, teaching)
        evaluation = tokenize(data.eval, tokenizer, spec.model.max_length)
        return TaskData(train, evaluation, data.label_names, train.truncated, eval_items=data.eval, notes=notes)

    def reader(self, tokenizer):
        """The files through the on-disk token store (data.cache), unless augmentation or distillation will need
        the training texts in memory anyway, or the run samples few rows (data.limit): tokenizing a whole big
        file to train on a small sample of it would cost more than it saves."""
        spec = self.spec
        small_sample = spec.data.limit is not None and spec.data.limit <= DIRECT_READ_LIMIT
        if spec.data.cache and not small_sample and not spec.data.augment.copies and not spec.distill.enabled:
            from tlscale.data.token_cache import cached_reader

            return cached_reader(tokenizer, spec.model.max_length)
        return read_examples

    def build_model(self, data: TaskData, load_options: dict):
        from tlscale.models import build_classifier

        return build_classifier(self.spec.model, data.label_names, load_options)

    def collate(self, dataset, indices, pad_id):
        batch = collate(dataset, indices, pad_id)
        return collate_with_teacher(batch, dataset, indices) if isinstance(dataset, TransferSet) else batch

    def loss(self, model, batch):
        if "teacher_log_probs" in batch:
            return distillation_loss(model, batch, self.spec.distill)
        return model(**batch).loss

    def probabilities(self, accelerator, model, data, pad_id, feature_cache=None) -> torch.Tensor:
        """Class probabilities of every eval example, in order, gathered over ranks."""
        eval_set = data.eval
        batches = sequential_batches(lengths(eval_set.input_ids), self.spec.eval.batch_size)
        return gather_rows(accelerator, lambda b: score_batches(model, eval_set, [b], pad_id, accelerator.device,
                                                                feature_cache), batches, len(eval_set))

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        import torch

        spec, eval_set = self.spec, data.eval
        probs = self.probabilities(accelerator, model, data, pad_id, feature_cache)
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
            if spec.eval.reliability_diagram:
                confidence, predicted = probs.float().max(dim=1)
                bins = reliability_bins(confidence, predicted == torch.tensor(eval_set.labels),
                                        spec.eval.calibration_bins)
                plot_reliability(run.path / "reliability.png", bins, metrics["ece"],
                                 f"{spec.strategy.name}: {metrics['num_examples']} eval examples")
        return metrics

    def headline(self, metrics: dict) -> str:
        return (f"eval accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  "
                f"ECE {metrics['ece']:.4f}  ({metrics['num_examples']} examples)")

    # --- saved models ---------------------------------------------------------------------------------

    def evaluate_checkpoint(self, checkpoint, out: Path) -> dict:
        from tlscale.models import load_trained_classifier

        model, tokenizer, label_names = load_trained_classifier(checkpoint)
        return self.evaluate_saved(model, tokenizer, out, self.saved_data(tokenizer, label_names))

    def saved_data(self, tokenizer, label_names: list[str] | None = None) -> TaskData:
        """The spec's data, which must be labelled as the model was trained (names and order)."""
        data = self.prepare(tokenizer)
        if label_names is not None and list(label_names) != list(data.label_names):
            raise ConfigError(f"data.labels: the spec's data gives {list(data.label_names)} but the model was "
                              f"trained with {list(label_names)} (in that order); make them match")
        return data

    @classmethod
    def predict_file(cls, checkpoint, trained, input_file, output_file, options) -> int:
        """Label and probabilities for each row; columns default to those of the training spec."""
        import torch

        from tlscale.data import read_examples
        from tlscale.eval import predict_probabilities
        from tlscale.models import load_trained_classifier
        from tlscale.spec.schema import DataSpec

        model, tokenizer, label_names = load_trained_classifier(checkpoint)
        columns = trained.get("data", {})
        text_pair = options.get("text_pair_column")
        data_spec = DataSpec(train_file=Path(input_file),
                             text_column=options.get("text_column") or columns.get("text_column", "text"),
                             text_pair_column=text_pair if text_pair is not None else columns.get("text_pair_column"))
        examples = read_examples(Path(input_file), data_spec, need_label=False)
        encoded = tokenize(examples, tokenizer, tokenizer.model_max_length)
        encoded.labels = []
        probs = predict_probabilities(model, encoded, options.get("batch_size", 64), tokenizer.pad_token_id,
                                      torch.device("cpu"))
        write_predictions(Path(output_file), examples.texts, probs, label_names, None, examples.where)
        return len(examples)
