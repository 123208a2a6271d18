from tlscale.cli import serve  # noqa: F401  (registers `tlscale serve`)
from tlscale.cli.app import app, main

__all__ = ["app", "main"]
