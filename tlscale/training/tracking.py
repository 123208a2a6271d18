"""Metric logging through Accelerate's tracker API: JSONL always, TensorBoard when asked."""
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


def trackers_for(output_dir: Path, tensorboard: bool) -> list:
    trackers: list = [JSONLTracker(output_dir / "metrics.jsonl")]
    if tensorboard:
        trackers.append("tensorboard")
    return trackers
