"""Error types. Anything the user can fix is a TlscaleError: the CLI prints it and exits 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class TlscaleError(Exception):
    """Base for every error caused by user input; carries one or more messages."""

    def __init__(self, messages: str | Iterable[str]):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


class ConfigError(TlscaleError):
    """The job spec (or a CLI option) is invalid."""


class DataError(TlscaleError):
    """A data file is missing, unreadable or has bad rows."""


class DependencyError(TlscaleError):
    """An optional dependency is missing; the message names the extra to install."""


class RunStateError(TlscaleError):
    """The output directory or a checkpoint is not in the state the command needs."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' did you mean X?' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


# Optional dependencies and the extra that installs each (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"peft": "lora", "bitsandbytes": "qlora", "deepspeed": "deepspeed", "ray": "ray",
          "sentence_transformers": "fewshot", "sklearn": "fewshot", "fastapi": "service", "uvicorn": "service",
          "sqlalchemy": "service", "alembic": "service", "httpx": "service", "mlflow": "mlflow", "wandb": "wandb"}


def require(module: str, extra: str | None = None):
    """Import an optional dependency (or one of its submodules) or say which extra installs it."""
    import importlib

    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is broken: show the real error
        raise DependencyError(
            f"'{top}' is not installed ({exc}). Install it with: pip install 'tlscale[{extra or EXTRAS[top]}]'"
        ) from None
