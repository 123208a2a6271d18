"""Uploads: streamed to a temporary file (size-limited, hashed on the way), checked with the readers
`tlscale validate` uses (file:line messages, the upload's own name in them), then kept under their SHA-256:
no client-chosen name ever reaches the disk."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select

from tlscale.errors import TlscaleError
from tlscale.service.store import StoredFile, Store, Team, new_id, now

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
CHUNK = 1 << 20


class UploadRefused(Exception):
    def __init__(self, messages: list[str], status: int = 422):
        super().__init__("; ".join(messages))
        self.messages, self.status = messages, status


def upload_format(filename: str) -> str:
    suffix = Path(filename).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UploadRefused([f"file: expected a name ending in .{', .'.join(FORMATS)} (the format), found "
                             f"{filename!r}"])
    return suffix


def check_contents(path: Path, fmt: str, shown_as: str) -> dict:
    """What the readers find: rows and columns of a table, questions of a SQuAD file. File:line messages
    name the upload as the client called it."""
    from tlscale.data.qa import read_questions
    from tlscale.data.readers import load_json, read_table

    try:
        if fmt == "json":
            document = load_json(path.read_text(encoding="utf-8"))
            if isinstance(document, dict) and isinstance(document.get("data"), list):  # SQuAD-style QA
                return {"kind": "squad", "questions": len(read_questions(path))}
        table = read_table(path, fmt)
        return {"kind": "table", "rows": len(table.records), "columns": list(table.columns)}
    except (TlscaleError, ValueError, UnicodeDecodeError) as exc:
        messages = exc.messages if isinstance(exc, TlscaleError) else [f"{path}: {exc}"]
        raise UploadRefused([m.replace(str(path), shown_as) for m in messages]) from None


async def store_upload(store: Store, files_dir: Path, team: Team, upload, max_bytes: int) -> StoredFile:
    """upload: a starlette UploadFile."""
    filename = Path(upload.filename or "").name
    fmt = upload_format(filename)
    files_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    handle, temp = tempfile.mkstemp(dir=files_dir, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRefused([f"file: larger than this server's limit of {max_bytes:,} bytes"], 413)
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise UploadRefused(["file: empty"])
        report = check_contents(Path(temp), fmt, filename)
        sha = digest.hexdigest()
        final = files_dir / sha[:2] / f"{sha}.{fmt}"
        final.parent.mkdir(exist_ok=True)
        os.replace(temp, final)  # identical contents land on the same name: one copy on disk
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    with store.session() as session:
        stored = StoredFile(id=new_id("file"), team_id=team.id, filename=filename, sha256=sha, bytes=size,
                            format=fmt, created_at=now(), report=report)
        session.add(stored)
        session.commit()
    return stored


def list_files(store: Store, team: Team, sha256: str | None = None) -> list[StoredFile]:
    with store.session() as session:
        query = select(StoredFile).where(StoredFile.team_id == team.id)
        if sha256:
            query = query.where(StoredFile.sha256 == sha256)
        return list(session.scalars(query.order_by(StoredFile.created_at.desc())).all())


def get_file(store: Store, team: Team, file_id: str) -> StoredFile | None:
    with store.session() as session:
        stored = session.get(StoredFile, file_id)
    return stored if stored is not None and stored.team_id == team.id else None
