"""Start the service: open (and migrate) the store, build the app and its dispatcher, serve with uvicorn."""
from __future__ import annotations

from pathlib import Path

from tlscale.errors import ConfigError, require
from tlscale.service.jobs import Settings
from tlscale.service.store import Store, database_url


def open_store(data_dir: Path | None, url: str | None) -> Store:
    if data_dir is None and url is None:
        raise ConfigError("--data-dir: the service needs a data dir (files, runs and, without --database-url, "
                          "its SQLite database)")
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    return Store(database_url(data_dir, url))


def build_app(data_dir: Path, url: str | None = None, allowed_roots: list[Path] | None = None, capacity: int = 1,
              max_attempts: int = 3, poll_s: float = 0.5, ray_address: str | None = None):
    """(app, store): the FastAPI app with its dispatcher, ready for uvicorn (or a test client). With
    ray_address, jobs run as Ray jobs on that cluster (runner: ray), else as processes of this host."""
    require("fastapi", "service")
    from tlscale.service.api import create_app
    from tlscale.service.backends import make_backend
    from tlscale.service.dispatcher import Dispatcher

    backend = make_backend(ray_address)
    store = open_store(data_dir, url)
    settings = Settings(data_dir=Path(data_dir).resolve(), allowed_roots=[Path(r) for r in allowed_roots or []],
                        max_attempts=max_attempts, runner=backend.runner)
    dispatcher = Dispatcher(store, settings, capacity=capacity, poll_s=poll_s, backend=backend)
    return create_app(store, settings, dispatcher), store


def serve(data_dir: Path, url: str | None, host: str, port: int, allowed_roots: list[Path], capacity: int,
          ray_address: str | None = None, announce=lambda: None) -> None:
    """Build the app (the store opened and migrated, the Ray job server reached), announce, serve."""
    uvicorn = require("uvicorn", "service")
    app, _store = build_app(data_dir, url, allowed_roots, capacity, ray_address=ray_address)
    announce()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def openapi_document() -> dict:
    """The API's OpenAPI document (committed as docs/openapi.json; a test keeps the two equal)."""
    require("fastapi", "service")
    from tlscale.service.api import create_app
    from tlscale.service.jobs import Settings

    class NoStore:  # the document needs the routes, not a database
        pass

    return create_app(NoStore(), Settings(data_dir=Path("."))).openapi()
