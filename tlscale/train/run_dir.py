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

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse to mix two runs in one folder unless the user says which (resume or overwrite)."""
        existing = (self.path / "spec.yaml").exists()
        finished = self.model_dir.exists()
        if existing and not (resume or overwrite):
            raise RunStateError(
                f"output_dir: '{self.path}' already holds a {'finished' if finished else 'started'} run. "
                "Use --resume to continue it, --overwrite to replace it, or set output_dir=NEW_DIR"
            )
        if resume and overwrite:
            raise RunStateError("--resume and --overwrite contradict each other; choose one")
        if resume and existing and finished:
            raise RunStateError(f"output_dir: the run in '{self.path}' has finished; nothing to resume")

    def create(self, spec: JobSpec, overwrite: bool) -> None:
        """Called once the spec, data and model have loaded: a run that fails to start deletes nothing."""
        if overwrite and (self.path / "spec.yaml").exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.spec_yaml = dump_spec(spec)
        (self.path / "spec.yaml").write_text(self.spec_yaml)

    def remember(self, spec: JobSpec) -> None:
        """Non-main ranks: know the resolved spec (saved into checkpoints) without writing files."""
        self.spec_yaml = dump_spec(spec)

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics_file, metrics)
