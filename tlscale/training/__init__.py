"""The training loop and what a runner hands it. Attributes load on first use, so that importing
tlscale.training.run (runners, validate) does not import torch."""

__all__ = ["Reporter", "Run", "RunResult", "train"]


def __getattr__(name: str):
    if name == "train":
        from tlscale.training.loop import train

        return train
    if name in ("Reporter", "Run", "RunResult"):
        from tlscale.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'tlscale.training' has no attribute '{name}'")
