"""`tlscale eval` and `tlscale predict`: a saved model on a spec's eval data or on any file. Every task
answers through its own Task methods (the loop's evaluation path), so no task is named here."""
from __future__ import annotations

from pathlib import Path

from tlscale.errors import DataError
from tlscale.files import write_json_atomic
from tlscale.run_folder import result_file, result_folder
from tlscale.spec import JobSpec


def evaluate_checkpoint(spec: JobSpec, checkpoint: str | Path, output_dir: str | Path | None = None) -> dict:
    """The task's own end-of-training evaluation of a saved model: metrics.json and the task's files
    (predictions, confusion matrix, generations) in output_dir (default OUTPUT_DIR/eval)."""
    from tlscale.tasks import build_task

    out = result_folder(Path(output_dir) if output_dir else Path(spec.output_dir) / "eval", "--output-dir")
    metrics = build_task(spec).evaluate_checkpoint(checkpoint, out)
    write_json_atomic(out / "metrics.json", {"task": spec.task, "checkpoint": str(checkpoint), "eval": metrics})
    return {"output_dir": str(out), **metrics}


def predict_file(checkpoint: str | Path, input_file: str | Path, output_file: str | Path, **options) -> int:
    """One prediction per row of input_file, by the task the saved model was trained for. options:
    text_column, text_pair_column, batch_size (defaults: the training spec's)."""
    import yaml

    from tlscale.tasks import TASKS

    if Path(output_file).resolve() == Path(input_file).resolve():
        raise DataError(f"--output: '{output_file}' is the input file; refusing to overwrite your data")
    result_file(output_file, "--output")
    trained = training_spec(Path(checkpoint), yaml)
    task = TASKS.get(trained.get("task", "text_classification"), field="--checkpoint (its tlscale_spec.yaml task)")
    return task.predict_file(Path(checkpoint), trained, Path(input_file), Path(output_file), options)


def training_spec(checkpoint: Path, yaml) -> dict:
    """The spec a saved model was trained with (tlscale writes it beside the weights)."""
    spec_file = checkpoint / "tlscale_spec.yaml"
    if not spec_file.is_file() and (checkpoint / "model" / "tlscale_spec.yaml").is_file():
        spec_file = checkpoint / "model" / "tlscale_spec.yaml"
    if not spec_file.is_file():
        return {}
    return yaml.safe_load(spec_file.read_text()) or {}
