"""The output directory of a run: what lives where. Claiming it (lock, --resume/--overwrite) is
tlscale.run_folder's job and happens before the loop starts."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tlscale.run_folder import PENDING_METRICS
from tlscale.spec import JobSpec, dump_spec
from tlscale.files import write_json_atomic
from tlscale.training.checkpoints import checkpoint_root


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.spec_yaml = ""

    model_dir = property(lambda self: self.path / "model")
    best_model = property(lambda self: checkpoint_root(self.path) / "best-model")
    metrics_file = property(lambda self: self.path / "metrics.json")
    pending_metrics = property(lambda self: self.path / PENDING_METRICS)
    log_file = property(lambda self: self.path / "metrics.jsonl")

    def create(self, spec: JobSpec) -> None:
        """Called once the spec, data and model have loaded, in a folder the runner has claimed."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.spec_yaml = dump_spec(spec)
        (self.path / "spec.yaml").write_text(self.spec_yaml)

    def remember(self, spec: JobSpec) -> None:
        """Non-main ranks: know the resolved spec (saved into checkpoints) without writing files."""
        self.spec_yaml = dump_spec(spec)

    def write_metrics(self, metrics: dict) -> None:
        """The last write of a run: with metrics.json in place the run is complete."""
        write_json_atomic(self.metrics_file, metrics)
        if self.pending_metrics.exists():
            self.pending_metrics.unlink()

    def write_pending_metrics(self, metrics: dict) -> None:
        """A launched worker's metrics; the launching process checks the saved model, then publishes them."""
        write_json_atomic(self.pending_metrics, metrics)

    def read_pending_metrics(self) -> dict:
        return json.loads(self.pending_metrics.read_text())

    def publish_pending_metrics(self) -> dict:
        metrics = self.read_pending_metrics()
        self.write_metrics(metrics)
        return metrics

    def forget_logs_after(self, step: int) -> None:
        """On resume: drop metrics.jsonl rows logged after the checkpoint; training logs them again."""
        if not self.log_file.is_file():
            return
        lines = self.log_file.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) != len(lines):
            tmp = self.log_file.with_name(f".{self.log_file.name}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.log_file)


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl row; None for a row cut short by a kill."""
    try:
        return int(json.loads(line).get("step") or 0)
    except (ValueError, AttributeError, TypeError):
        return None
