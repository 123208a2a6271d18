"""The output directory of a run: what lives where, and guards against clobbering a finished run."""
from __future__ import annotations

import shutil
from pathlib import Path

from tlscale.errors import RunStateError
from tlscale.spec import JobSpec, dump_spec
from tlscale.train.checkpoints import checkpoint_root, write_json_atomic


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.spec_yaml = ""

    model_dir = property(lambda self: self.path / "model")
    best_model = property(lambda self: checkpoint_root(self.path) / "best-model")
    metrics_file = property(lambda self: self.path / "metrics.json")

    def prepare(self, spec: JobSpec, resume: bool, overwrite: bool) -> None:
        """Refuse to mix two runs in one folder unless the user says which (resume or overwrite)."""
        existing = (self.path / "spec.yaml").exists()
        if existing and overwrite:
            shutil.rmtree(self.path)
        elif existing and not resume:
            finished = self.model_dir.exists()
            raise RunStateError(
                f"output_dir: '{self.path}' already holds a {'finished' if finished else 'started'} run. "
                "Use --resume to continue it, --overwrite to replace it, or set output_dir=NEW_DIR"
            )
        elif resume and existing and self.model_dir.exists():
            raise RunStateError(f"output_dir: the run in '{self.path}' has finished; nothing to resume")
        self.path.mkdir(parents=True, exist_ok=True)
        self.spec_yaml = dump_spec(spec)
        (self.path / "spec.yaml").write_text(self.spec_yaml)

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics_file, metrics)
