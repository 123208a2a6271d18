from tlscale.training.loop import train
from tlscale.training.run import Reporter, Run, RunResult

__all__ = ["Reporter", "Run", "RunResult", "train"]
