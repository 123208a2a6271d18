"""Runners: local (this process or N local processes) and ray. Importing the package registers them."""
from tlscale.runners import local, ray_runner  # noqa: F401  (registers)
from tlscale.runners.base import RUNNERS, RunOptions, WorkerFailed
from tlscale.spec import JobSpec
from tlscale.tasks.distillation import TEACHER_SCORERS
from tlscale.training.run import RunResult


@TEACHER_SCORERS.register("fewshot")
def _fewshot_teacher(folder, examples, spec, want_features: bool) -> dict:
    """A few-shot run folder as a student's teacher: registered here, where every training process passes; the
    few-shot code (and torch) loads only when such a teacher is used."""
    from tlscale.fewshot.teacher import label_transfer_texts

    return label_transfer_texts(folder, examples, spec, want_features)


def run_training(spec: JobSpec, options: RunOptions | None = None, **settings) -> RunResult | None:
    """Run a spec with the runner it names. settings: RunOptions fields (resume=True, ...)."""
    return RUNNERS.get(spec.runner, field="runner")(spec, options or RunOptions(**settings))


__all__ = ["RUNNERS", "RunOptions", "WorkerFailed", "run_training"]
