"""tlscale: transfer learning at scale, from one YAML job spec."""
from tlscale.errors import ConfigError, DataError, DependencyError, TlscaleError
from tlscale.spec import JobSpec, load_spec
import tlscale.strategies  # noqa: E402,F401  (registers the built-in strategies and their options: light, no torch)
import tlscale.tasks  # noqa: E402,F401  (registers the built-in tasks)

__version__ = "0.1.0"


def train(spec, **options):
    """Run a spec with its runner, as `tlscale train` does. options: resume, overwrite, stop_after_steps,
    show_progress (tlscale.runners.base.RunOptions)."""
    from tlscale.runners import run_training

    return run_training(spec, **options)


def evaluate(spec, checkpoint, **kwargs):
    from tlscale.inference.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(spec, checkpoint, **kwargs)


__all__ = ["ConfigError", "DataError", "DependencyError", "JobSpec", "TlscaleError", "evaluate", "load_spec", "train"]
