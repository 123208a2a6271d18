"""A real tlscale server on loopback (uvicorn in a thread) over a fresh data dir, and clients for its teams."""
from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    data_dir: Path
    store: object
    dispatcher: object | None
    _server: object
    _thread: threading.Thread

    def team(self, name: str, **quotas) -> httpx.Client:
        """A client holding a new team's token."""
        from tlscale.service.teams import create_team, set_quotas

        _, token = create_team(self.store, name)
        if quotas:
            set_quotas(self.store, name, **quotas)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.store.close()


def start_server(data_dir: Path, dispatch: bool = True, **options) -> Server:
    import uvicorn

    from tlscale.service.server import build_app

    app, store = build_app(data_dir, poll_s=0.2, **options)
    if not dispatch:
        app.router.lifespan_context = _no_lifespan
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    return Server(f"http://127.0.0.1:{port}", data_dir, store, None, server, thread)


@contextlib.asynccontextmanager
async def _no_lifespan(_app):
    """A server that takes requests but runs nothing (creation, listing and tenancy tests)."""
    yield


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextlib.contextmanager
def throwaway_postgres():
    """The URL of a throwaway PostgreSQL 15 cluster on loopback (initdb as the postgres user, trust auth),
    stopped and removed afterwards."""
    import shutil
    import subprocess

    root = Path(tempfile.mkdtemp(prefix="tlscale-pg-"))
    shutil.chown(root, "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(root / "data"), "--auth=trust", "-U",
                        "postgres"], check=True, capture_output=True)
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"),
                        "-o", f"-p {port} -k {root} -h 127.0.0.1 -c max_connections=200", "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # no pipes:
        # the server would hold them open and run() would wait for it to exit
        subprocess.run([*as_postgres, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "tlscale"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/tlscale"
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL for the session; skipped where the server binaries are missing."""
    import shutil

    if not (PG_BIN / "initdb").is_file() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 server binaries not installed")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory):
    """A server that only records jobs (no dispatcher): fast, for the API's own behaviour; on SQLite and on
    PostgreSQL (the same tests pass on both stores)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    if url is not None:  # a fresh database per module
        import sqlalchemy

        name = f"m{tmp_path_factory.getbasetemp().name[-6:].replace('-', '')}{id(request) % 100000}"
        with sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = url.rsplit("/", 1)[0] + f"/{name}"
    server = start_server(tmp_path_factory.mktemp("service"), dispatch=False, url=url)
    yield server
    server.stop()


@pytest.fixture
def running_api(tmp_path):
    """A server whose dispatcher validates and runs jobs with the local runner."""
    server = start_server(tmp_path / "service", dispatch=True, capacity=1)
    yield server
    server.stop()


def wait_for_state(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")
