"""A small client of the job API: what `tlscale submit --server` and `tlscale jobs ... --server` use, and
what a notebook or a pipeline can use directly:

    from tlscale.service.client import Client
    client = Client("http://tlscale.internal:8000", token)       # or Client() with TLSCALE_SERVER/TLSCALE_TOKEN
    job = client.submit("configs/sst2-minilm-lora.yaml")          # uploads the data files it names (once)
    client.wait(job["id"])

Only httpx is needed (no database, no torch)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from tlscale.errors import ConfigError, require

TOKEN_FILE = Path.home() / ".config" / "tlscale" / "token"
ENDED = ("succeeded", "failed", "cancelled")


class ServiceError(ConfigError):
    """The server refused a request: its message, with the HTTP status (None: it could not be reached)."""

    def __init__(self, messages, status: int | None = None, kind: str | None = None):
        super().__init__(messages)
        self.status, self.kind = status, kind


def _token(token: str | None) -> str:
    if token:
        return token
    if os.environ.get("TLSCALE_TOKEN"):
        return os.environ["TLSCALE_TOKEN"]
    if TOKEN_FILE.is_file():
        return TOKEN_FILE.read_text().strip()
    raise ConfigError(f"no API token: set TLSCALE_TOKEN or write it to {TOKEN_FILE}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 60.0):
        httpx = require("httpx", "service")
        server = server or os.environ.get("TLSCALE_SERVER")
        if not server:
            raise ConfigError("--server: the job API's address, e.g. http://127.0.0.1:8000 (or set TLSCALE_SERVER)")
        self._uploaded: dict[tuple, dict] = {}  # (path, size, mtime) -> the server's file: hashed once
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {_token(token)}"})

    def _call(self, method: str, path: str, **kwargs) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            kind = None
            try:
                error = response.json()["error"]
                messages, kind = error.get("details") or [error["message"]], error.get("type")
            except (ValueError, KeyError, TypeError):
                messages = [response.text[:500]]
            raise ServiceError([f"server ({response.status_code}): {m}" for m in messages], response.status_code, kind)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") \
            else response

    # --- files and jobs --------------------------------------------------------------------------------

    def upload(self, path: str | Path) -> dict:
        """The server's file for these bytes: uploaded once, found by content hash afterwards."""
        path = Path(path)
        info = path.stat()
        stamp = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if stamp not in self._uploaded:
            self._uploaded[stamp] = self._upload(path)
        return self._uploaded[stamp]

    def _upload(self, path: Path) -> dict:
        known = self._call("GET", "/v1/files", params={"sha256": sha256_of(path)})["data"]
        same_name = [f for f in known if f["filename"] == path.name]
        if same_name or known:
            return (same_name or known)[0]
        with open(path, "rb") as handle:
            return self._call("POST", "/v1/files", files={"file": (path.name, handle)})

    def create_job(self, spec: dict, metadata: dict | None = None, priority: int = 0,
                   idempotency_key: str | None = None, command: str = "train") -> dict:
        """command: what the job runs on the spec, `tlscale train` or `tlscale fewshot`."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/fine_tuning/jobs", headers=headers,
                          json={"spec": spec, "metadata": metadata or {}, "priority": priority, "command": command})

    def with_uploads(self, raw: dict) -> dict:
        """raw (a spec as a dict) with each data file it names uploaded and replaced by its file id."""
        import copy

        from tlscale.tasks.base import data_sections

        raw = copy.deepcopy(raw)
        raw.pop("output_dir", None)  # the server's
        for _, data in data_sections(raw):
            for key in ("train_file", "eval_file"):
                if data.get(key) is not None:
                    data[key] = self.upload(data[key])["id"]
        return raw

    def submit(self, spec_path: str | Path, overrides: list[str] | None = None, **options) -> dict:
        """Validate a local spec, upload the data files it names, create the job."""
        from tlscale.spec import load_spec

        spec = load_spec(spec_path, overrides)
        return self.create_job(self.with_uploads(spec.model_dump(mode="json")), **options)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def jobs(self, limit: int = 20, after: str | None = None) -> dict:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit, **({"after": after} if after else {})})

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")

    def events(self, job_id: str, after: int | None = None, limit: int = 1000) -> dict:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/events",
                          params={"limit": limit, **({"after": after} if after is not None else {})})

    def metrics(self, job_id: str) -> dict:
        """The run's logged rows and, once it succeeded, its metrics.json ("final")."""
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/metrics")

    def download_model(self, job_id: str, target: str | Path) -> Path:
        response = self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/artifacts/model.tar.gz")
        Path(target).write_bytes(response.content)
        return Path(target)

    def wait(self, job_id: str, on_event: Callable[[dict], None] | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None) -> dict:
        """Follow a job to its end, handing each new event to on_event; the job as it ended."""
        seen, started = None, time.monotonic()
        while True:
            for event in self.events(job_id, after=seen)["data"]:
                seen = event["seq"]
                if on_event is not None:
                    on_event(event)
            job = self.job(job_id)
            if job["status"] in ENDED:
                for event in self.events(job_id, after=seen)["data"]:
                    if on_event is not None:
                        on_event(event)
                return job
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise ServiceError(f"job {job_id} still {job['status']} after {timeout_s:g} s")
            time.sleep(poll_s)
