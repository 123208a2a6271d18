"""`tlscale eval` and `tlscale predict`: a saved model on a spec's eval data or any file."""
from __future__ import annotations

from pathlib import Path

import torch

from tlscale.data import read_examples, tokenize
from tlscale.data.classification import encode_labels
from tlscale.errors import DataError
from tlscale.run_folder import result_file, result_folder
from tlscale.eval import classification_metrics, plot_confusion_matrix, predict_probabilities, write_predictions
from tlscale.spec import JobSpec
from tlscale.models.saved import load_task_model
from tlscale.training.checkpoints import write_json_atomic, write_jsonl_atomic


def evaluate_checkpoint(spec: JobSpec, checkpoint: str | Path, output_dir: str | Path | None = None) -> dict:
    from tlscale.models import load_trained_classifier

    if spec.task != "text_classification":
        return evaluate_task_checkpoint(spec, checkpoint, output_dir)
    out = result_folder(Path(output_dir) if output_dir else Path(spec.output_dir) / "eval", "--output-dir")
    model, tokenizer, label_names = load_trained_classifier(checkpoint)
    _labels_agree(spec, label_names, checkpoint)
    examples, encoded, probs, metrics = score_on_eval_data(model, tokenizer, label_names, spec)
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

    _refuse_overwriting_input(output_file, input_file)
    result_file(output_file, "--output")
    saved = _training_spec(Path(checkpoint), yaml)
    task = saved.get("task", "text_classification")
    if task == "extractive_qa":
        return predict_answers(checkpoint, input_file, output_file, saved, batch_size)
    if task != "text_classification":
        from tlscale.errors import ConfigError

        raise ConfigError(f"--checkpoint: a {task} model; use `tlscale generate --checkpoint {checkpoint} "
                          f"--input {input_file}` for completions")
    model, tokenizer, label_names = load_trained_classifier(checkpoint)
    trained = saved.get("data", {})
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
    write_predictions(output_file, examples.texts, probs, label_names, None, examples.where)
    return len(examples)


def evaluate_task_checkpoint(spec: JobSpec, checkpoint: str | Path, output_dir: str | Path | None = None) -> dict:
    """QA, causal LM and later tasks: the task's own evaluation, as at the end of training, on a saved model."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from tlscale.tasks import build_task

    task = build_task(spec)
    out = result_folder(Path(output_dir) if output_dir else Path(spec.output_dir) / "eval", "--output-dir")
    model, tokenizer = load_task_model(checkpoint, task.auto_class)
    tokenizer.model_max_length = spec.model.max_length
    data = task.prepare(tokenizer)
    metrics = task.evaluate(Accelerator(), model, data, SimpleNamespace(path=out), tokenizer.pad_token_id,
                            write_files=True)
    write_json_atomic(out / "metrics.json", {"task": spec.task, "checkpoint": str(checkpoint), "eval": metrics})
    return {"output_dir": str(out), **metrics}


def predict_answers(checkpoint: str | Path, input_file: str | Path, output_file: str | Path, trained: dict,
                    batch_size: int = 64) -> int:
    """extractive_qa: the best answer span for each question of a SQuAD JSON or flat jsonl/csv file
    (gold answers optional), with the window settings the model was trained with."""
    from tlscale.data.qa import read_questions
    from tlscale.data.qa_windows import make_windows
    from tlscale.eval.qa_evaluation import window_logits
    from tlscale.eval.qa_answers import best_answers
    from tlscale.spec.schema import QaSpec

    qa = QaSpec(**trained.get("qa", {}))
    model, tokenizer = load_task_model(checkpoint, "AutoModelForQuestionAnswering")
    max_length = trained.get("model", {}).get("max_length", 384)
    questions = read_questions(Path(input_file), need_answers=False)
    windows = make_windows(questions, tokenizer, max_length, qa.doc_stride)
    logits = window_logits(model, windows, list(range(len(windows))), tokenizer.pad_token_id, batch_size,
                           torch.device("cpu"), accepts_token_types="token_type_ids" in tokenizer.model_input_names)
    answers = best_answers(questions, windows, [logits[i][0] for i in range(len(windows))],
                           [logits[i][1] for i in range(len(windows))], n_best=qa.n_best,
                           max_answer_tokens=qa.max_answer_tokens,
                           null_threshold=qa.null_threshold if qa.version == "v2" else None)
    rows = [{"id": q.id, "question": q.question, "answer": answers[q.id], "source": q.where} for q in questions]
    write_jsonl_atomic(Path(output_file), rows)
    return len(rows)


def _labels_agree(spec: JobSpec, label_names: list[str], checkpoint) -> None:
    """Scoring with the checkpoint's labels when the spec names others would report a meaningless figure."""
    from tlscale.errors import ConfigError

    if spec.data.labels is not None and list(spec.data.labels) != list(label_names):
        raise ConfigError(f"data.labels: the spec names {list(spec.data.labels)} but the checkpoint "
                          f"'{checkpoint}' was trained with {list(label_names)} (in that order); make them match")


def _refuse_overwriting_input(output_file, input_file) -> None:
    if Path(output_file).resolve() == Path(input_file).resolve():
        raise DataError(f"--output: '{output_file}' is the input file; refusing to overwrite your data")


def _training_spec(checkpoint: Path, yaml) -> dict:
    """The spec a saved model was trained with (tlscale writes it beside the weights)."""
    spec_file = checkpoint / "tlscale_spec.yaml"
    if not spec_file.is_file() and (checkpoint / "model" / "tlscale_spec.yaml").is_file():
        spec_file = checkpoint / "model" / "tlscale_spec.yaml"
    if not spec_file.is_file():
        return {}
    return yaml.safe_load(spec_file.read_text()) or {}
