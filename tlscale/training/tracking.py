"""Metric logging through Accelerate's tracker API: JSONL always, and the trackers of training.report_to
(TensorBoard, MLflow, Weights & Biases), each imported only when asked for."""
from __future__ import annotations

import json
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker


class JSONLTracker(GeneralTracker):
    """One JSON object per log call, appended to metrics.jsonl (resume keeps the history)."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self):
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        row = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")


PROJECT = "tlscale"  # MLflow experiment / W&B project unless MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT say otherwise


def trackers_for(output_dir: Path, report_to: list[str]) -> list:
    """Tracker objects for Accelerate's log_with: metrics.jsonl, then each of report_to. TensorBoard writes
    OUTPUT_DIR/tensorboard; MLflow logs to MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db (artifacts in OUTPUT_DIR/mlruns); W&B keeps
    its files in OUTPUT_DIR/wandb (WANDB_MODE=offline runs without an account or a network)."""
    import os

    from tlscale.errors import require

    trackers: list = [JSONLTracker(output_dir / "metrics.jsonl")]
    for name in report_to:
        if name == "tensorboard":
            from accelerate.tracking import TensorBoardTracker

            trackers.append(TensorBoardTracker("tensorboard", output_dir))
        elif name == "mlflow":
            mlflow = require("mlflow")
            from accelerate.tracking import MLflowTracker

            if not os.environ.get("MLFLOW_TRACKING_URI"):  # (MLflow 3 refuses new file stores: SQLite)
                mlflow.set_tracking_uri(local_mlflow_uri(output_dir))
            trackers.append(MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT),
                                          (output_dir / "mlruns").resolve().as_uri(), run_name=output_dir.name))
        elif name == "wandb":
            require("wandb")
            from accelerate.tracking import WandBTracker

            trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), dir=str(output_dir),
                                         name=output_dir.name))
    return trackers


def local_mlflow_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
