"""`tlscale eval` and `tlscale predict`: a saved model on a spec's eval data or any file."""
from __future__ import annotations

from pathlib import Path

import torch

from tlscale.data import read_examples, tokenize
from tlscale.data.classification import encode_labels
from tlscale.errors import DataError
from tlscale.eval import classification_metrics, plot_confusion_matrix, predict_probabilities, write_predictions
from tlscale.spec import JobSpec
from tlscale.train.checkpoints import write_json_atomic


def evaluate_checkpoint(spec: JobSpec, checkpoint: str | Path, output_dir: str | Path | None = None) -> dict:
    from tlscale.models import load_trained_classifier

    _classification_only(spec.task, "eval")
    model, tokenizer, label_names = load_trained_classifier(checkpoint)
    examples, encoded, probs, metrics = score_on_eval_data(model, tokenizer, label_names, spec)
    out = Path(output_dir) if output_dir else Path(spec.output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", {"task": spec.task, "checkpoint": str(checkpoint), "eval": metrics})
    write_predictions(out / "predictions.jsonl", examples.texts, probs, label_names, encoded.labels, examples.where)
    plot_confusion_matrix(out / "confusion_matrix.png", metrics["confusion_matrix"], label_names,
                          f"accuracy {metrics['accuracy']:.3f}")
    return {"output_dir": str(out), **metrics}


def score_on_eval_data(model, tokenizer, label_names: list[str], spec: JobSpec):
    """(examples, encoded, probabilities, metrics) of a model on the spec's evaluation examples."""
    examples = eval_examples(spec, label_names)
    encoded = tokenize(examples, tokenizer, spec.model.max_length)
    probs = predict_probabilities(model, encoded, spec.eval.batch_size, tokenizer.pad_token_id, torch.device("cpu"))
    metrics = classification_metrics(probs, torch.tensor(encoded.labels), label_names, spec.eval.calibration_bins)
    return examples, encoded, probs, metrics


def eval_examples(spec: JobSpec, label_names: list[str]):
    """The eval file, or the same seeded held-out split that training used."""
    from tlscale.data.classification import sample, stratified_split

    data_spec = spec.data
    if data_spec.eval_file is not None:
        examples = read_examples(data_spec.eval_file, data_spec)
        encode_labels(examples, label_names, declared=True)
    else:
        examples = read_examples(data_spec.train_file, data_spec)
        encode_labels(examples, label_names, declared=True)
        _, examples = stratified_split(sample(examples, data_spec.limit, spec.seed), data_spec.eval_fraction, spec.seed)
    return sample(examples, data_spec.eval_limit, spec.seed)


def predict_file(checkpoint: str | Path, input_file: str | Path, output_file: str | Path,
                 text_column: str | None = None, text_pair_column: str | None = None, batch_size: int = 64) -> int:
    """Label and probabilities for each row of a file; columns default to those of the training spec."""
    import yaml

    from tlscale.models import load_trained_classifier
    from tlscale.spec.schema import DataSpec

    model, tokenizer, label_names = load_trained_classifier(checkpoint)
    trained = _training_data_spec(Path(checkpoint), yaml)
    data_spec = DataSpec(
        train_file=Path(input_file),
        text_column=text_column or trained.get("text_column", "text"),
        text_pair_column=text_pair_column if text_pair_column is not None else trained.get("text_pair_column"),
    )
    examples = read_examples(Path(input_file), data_spec, need_label=False)
    encoded = tokenize(examples, tokenizer, tokenizer.model_max_length)
    encoded.labels = []
    probs = predict_probabilities(model, encoded, batch_size, tokenizer.pad_token_id, torch.device("cpu"))
    output_file = Path(output_file)
    if output_file.resolve() == Path(input_file).resolve():
        raise DataError(f"--output: '{output_file}' is the input file; refusing to overwrite your data")
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(output_file, examples.texts, probs, label_names, None, examples.where)
    return len(examples)


def _classification_only(task: str, command: str) -> None:
    if task != "text_classification":
        from tlscale.errors import ConfigError

        raise ConfigError(f"task: `tlscale {command}` supports text_classification so far, found '{task}'; "
                          "training evaluates extractive_qa at the end (metrics.json, predictions.jsonl)")


def _training_data_spec(checkpoint: Path, yaml) -> dict:
    spec_file = checkpoint / "tlscale_spec.yaml"
    if not spec_file.is_file():
        return {}
    return (yaml.safe_load(spec_file.read_text()) or {}).get("data", {})
