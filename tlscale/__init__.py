"""tlscale: transfer learning at scale, from one YAML job spec."""
from tlscale.errors import ConfigError, DataError, DependencyError, TlscaleError
from tlscale.spec import JobSpec, load_spec

__version__ = "0.1.0"


def train(spec, **kwargs):
    from tlscale.train import train as _train

    return _train(spec, **kwargs)


def evaluate(spec, checkpoint, **kwargs):
    from tlscale.runners.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(spec, checkpoint, **kwargs)


__all__ = ["ConfigError", "DataError", "DependencyError", "JobSpec", "TlscaleError", "evaluate", "load_spec", "train"]
