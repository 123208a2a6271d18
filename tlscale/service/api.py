"""The HTTP API, versioned under /v1 (shapes after OpenAI's fine-tuning jobs API: files; jobs create, list,
get, cancel; events; `{"object": "list", "data": [...], "has_more": ...}` pages with after/limit).

Every route but /healthz needs `Authorization: Bearer <token>`, and every query is scoped to the token's
team: another team's job or file answers 404, exactly like one that does not exist. Errors are
`{"error": {"type", "message", "details"}}` with a 4xx status; nothing a client sends produces a 500 or
a traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tlscale.errors import TlscaleError
from tlscale.logs import log
from tlscale.service import files as uploads
from tlscale.service import jobs as job_ops
from tlscale.service.store import COMMANDS, Job, JobEvent, StoredFile, Store, Team
from tlscale.service.teams import team_of_token

PAGE = Path(__file__).with_name("page.html")
MAX_JSON_BYTES = 1 << 20
PAGE_LIMIT = 100


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", details: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.details, self.headers = status, message, kind, details, headers


def _error(status: int, kind: str, message: str, details: list | None = None, headers: dict | None = None):
    body = {"error": {"type": kind, "message": message, **({"details": details} if details else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def file_object(stored: StoredFile) -> dict:
    return {"id": stored.id, "object": "file", "filename": stored.filename, "bytes": stored.bytes,
            "sha256": stored.sha256, "format": stored.format, "created_at": int(stored.created_at),
            "validation": stored.report}


def job_object(store: Store, job: Job) -> dict:
    position, depth = job_ops.queue_position(store, job)
    spec = job.spec
    return {"id": job.id, "object": "fine_tuning.job", "command": job.command, "status": job.state,
            "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at, "attempt": job.attempt,
            "queue_position": position, "queue_depth": depth, "priority": job.priority, "metadata": job.job_metadata,
            "training_files": job.files, "task": spec.get("task"), "model": spec.get("model", {}).get("name_or_path"),
            "strategy": (spec.get("strategy") or {}).get("name"), "cancel_requested": job.cancel_requested,
            "error": None if job.state != "failed" else {"kind": job.error_kind, "message": job.error}}


def event_object(event: JobEvent) -> dict:
    return {"object": "fine_tuning.job.event", "seq": event.seq, "created_at": event.created_at,
            "type": event.kind, "message": event.message, "data": event.data}


def page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more}


def store_of(request: Request) -> Store:
    return request.app.state.store


def settings_of(request: Request) -> job_ops.Settings:
    return request.app.state.settings


def caller_of(request: Request, authorization: str | None = Header(None)) -> Team:
    """The team of the request's bearer token; 401 for a missing, unknown, revoked or expired one."""
    scheme, _, token = (authorization or "").partition(" ")
    found = team_of_token(store_of(request), token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if found is None:
        raise ApiError(401, "missing, unknown, revoked or expired API token (Authorization: Bearer <token>)",
                       "authentication_error", headers={"WWW-Authenticate": "Bearer"})
    return found


StoreDep = Annotated[Store, Depends(store_of)]
SettingsDep = Annotated[job_ops.Settings, Depends(settings_of)]
Caller = Annotated[Team, Depends(caller_of)]
router = APIRouter()


def create_app(store: Store, settings: job_ops.Settings, dispatcher=None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if dispatcher is not None:
            dispatcher.start()
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()

    app = FastAPI(title="tlscale", version="1", lifespan=lifespan,
                  description="Fine-tuning jobs for teams sharing a cluster: tlscale job specs, run for you.")
    app.state.store, app.state.settings = store, settings
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(router)
    return app


async def _api_error(_request, exc: ApiError):
    return _error(exc.status, exc.kind, exc.message, exc.details, exc.headers)


async def _invalid_request(_request, exc: RequestValidationError):
    details = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return _error(422, "invalid_request_error", details[0] if details else "invalid request", details)


async def _http_error(_request, exc: StarletteHTTPException):
    return _error(exc.status_code, "invalid_request_error", str(exc.detail))


async def _unexpected(_request, exc: Exception):
    log.exception("internal error")
    return _error(500, "server_error", "internal error; the server's log has the details")


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict:
    return {"ok": True}


@router.get("/", include_in_schema=False)
def team_page() -> HTMLResponse:
    """The team's page: sign in with a token, jobs with their state and queue position, a job's events,
    loss curve and model download (it calls the API above with the token; nothing is rendered server-side)."""
    return HTMLResponse(PAGE.read_text())


# --- files ------------------------------------------------------------------------------------------


@router.post("/v1/files", status_code=201)
async def upload_file(caller: Caller, store: StoreDep, settings: SettingsDep, file: UploadFile = File(...)) -> dict:
    """Upload training or evaluation data (csv, tsv, jsonl, json, parquet; the name's ending says which).
    It is checked as `tlscale validate` reads it; a bad file answers 422 with file:line messages."""
    try:
        stored = await uploads.store_upload(store, settings.files_dir, caller, file, settings.max_upload_bytes)
    except uploads.UploadRefused as exc:
        raise ApiError(exc.status, exc.messages[0], details=exc.messages) from None
    return file_object(stored)


@router.get("/v1/files")
def list_files(caller: Caller, store: StoreDep, sha256: str | None = Query(None, pattern="^[0-9a-f]{64}$")) -> dict:
    return page([file_object(f) for f in uploads.list_files(store, caller, sha256)], False)


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, caller: Caller, store: StoreDep) -> dict:
    stored = uploads.get_file(store, caller, file_id)
    if stored is None:
        raise ApiError(404, f"no file '{file_id}'", "not_found_error")
    return file_object(stored)


# --- jobs -------------------------------------------------------------------------------------------


@router.post("/v1/fine_tuning/jobs", status_code=201)
async def create_job(request: Request, caller: Caller, store: StoreDep, settings: SettingsDep,
                     idempotency_key: str | None = Header(None, max_length=255)) -> JSONResponse:
    """Body: {"spec": a tlscale job spec (an object, or YAML text), "metadata": {str: str}, "priority": int,
    "command": "train" (default) or "fewshot"}. data.train_file / eval_file name uploaded files by id.
    output_dir is the server's."""
    body = await _json_body(request)
    raw = body.get("spec")
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ApiError(422, f"spec: not valid YAML: {exc}") from None
    metadata, priority = body.get("metadata") or {}, body.get("priority", 0)
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64
                                                 and len(v) <= 512 for k, v in metadata.items()):
        raise ApiError(422, "metadata: expected an object of strings (keys up to 64, values up to 512 chars)")
    if isinstance(priority, bool) or not isinstance(priority, int) or not -100 <= priority <= 100:
        raise ApiError(422, f"priority: expected an integer from -100 to 100, found {priority!r}")
    command = body.get("command", "train")
    if command not in COMMANDS:
        raise ApiError(422, f"command: expected one of {', '.join(COMMANDS)}, found {command!r}")
    try:
        job, created = job_ops.create_job(store, settings, caller, raw, metadata=metadata, priority=priority,
                                          idempotency_key=idempotency_key, command=command)
    except TlscaleError as exc:
        raise ApiError(422, exc.messages[0], details=exc.messages) from None
    except job_ops.QuotaExceeded as exc:
        raise ApiError(429, str(exc), "quota_exceeded_error") from None
    return JSONResponse(job_object(store, job), status_code=201 if created else 200)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, caller: Caller, store: StoreDep, after: str | None = None,
              limit: int = Query(20, ge=1, le=PAGE_LIMIT)) -> dict:
    """Newest first. Filter by metadata with metadata.KEY=VALUE query parameters."""
    metadata = {k.removeprefix("metadata."): v for k, v in request.query_params.items()
                if k.startswith("metadata.")}
    try:
        found, more = job_ops.list_jobs(store, caller, after, limit, metadata)
    except job_ops.NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error") from None
    return page([job_object(store, j) for j in found], more)


def _job(store: Store, job_id: str, caller: Team) -> Job:
    try:
        return job_ops.get_job(store, caller, job_id)
    except job_ops.NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error") from None


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job_id: str, caller: Caller, store: StoreDep) -> dict:
    return job_object(store, _job(store, job_id, caller))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, caller: Caller, store: StoreDep) -> dict:
    try:
        return job_object(store, job_ops.cancel_job(store, caller, job_id))
    except job_ops.NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error") from None


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def job_events(job_id: str, caller: Caller, store: StoreDep, after: int | None = Query(None, ge=-1),
               limit: int = Query(100, ge=1, le=1000)) -> dict:
    try:
        found, more = job_ops.events(store, caller, job_id, after, limit)
    except job_ops.NotFound as exc:
        raise ApiError(404, str(exc), "not_found_error") from None
    return page([event_object(e) for e in found], more)


@router.get("/v1/fine_tuning/jobs/{job_id}/metrics")
def job_metrics(job_id: str, caller: Caller, store: StoreDep, settings: SettingsDep) -> dict:
    """The run's logged rows so far and, once it succeeded, its final metrics.json."""
    run = job_ops.job_dir(settings, _job(store, job_id, caller).id) / "run"
    rows = []
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    final = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
    if final is not None:
        final.pop("output_dir", None)
    return {"object": "fine_tuning.job.metrics", "rows": rows, "final": final}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, caller: Caller, store: StoreDep, settings: SettingsDep) -> dict:
    run = job_ops.job_dir(settings, _job(store, job_id, caller).id) / "run"
    steps = sorted(int(p.name.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*")
                   if p.is_dir() and p.name.removeprefix("step-").isdigit())
    return page([{"object": "fine_tuning.job.checkpoint", "step": step, "name": f"step-{step}"} for step in steps],
                False)


@router.get("/v1/fine_tuning/jobs/{job_id}/artifacts/model.tar.gz")
def job_model(job_id: str, caller: Caller, store: StoreDep, settings: SettingsDep) -> StreamingResponse:
    """The saved model folder (and the LoRA adapter, if any) of a succeeded job, as one archive."""
    job = _job(store, job_id, caller)
    run = job_ops.job_dir(settings, job.id) / "run"
    if job.state != "succeeded" or not (run / "model").is_dir():
        raise ApiError(409, f"job '{job_id}' has no model yet (status {job.state})", "conflict_error")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("model", "model-adapter"):
            if (run / name).is_dir():
                archive.add(run / name, arcname=name)
    buffer.seek(0)
    return StreamingResponse(buffer, media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{job.id}-model.tar.gz"'})


@router.get("/v1/usage")
def team_usage(caller: Caller, store: StoreDep) -> dict:
    """The team's use of its quotas: compute-hours this calendar month (UTC; a job's training processes
    times its running time), jobs running and waiting, and the limits."""
    return {"object": "usage", "team": caller.name, **job_ops.usage(store, caller)}


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "expected Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_JSON_BYTES):
        raise ApiError(413, f"body: larger than {MAX_JSON_BYTES:,} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, f"body: larger than {MAX_JSON_BYTES:,} bytes")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ApiError(422, f"body: expected a JSON object, found {type(parsed).__name__}")
    unknown = sorted(set(parsed) - {"spec", "metadata", "priority", "command"})
    if unknown:
        raise ApiError(422, f"body: unknown field(s) {unknown}; expected spec, metadata, priority, command")
    if "spec" not in parsed:
        raise ApiError(422, "body: spec is required (a tlscale job spec, as an object or YAML text)")
    return parsed
