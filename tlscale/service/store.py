"""The service's durable record: teams, their tokens, uploaded files, jobs and job events, in SQLAlchemy 2
tables on SQLite (embedded, WAL) or PostgreSQL. The schema is Alembic's (tlscale/service/migrations): a
store is brought to the latest revision when opened, by whichever replica opens it first."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

STATES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
COMMANDS = ("train", "fewshot")  # what a job runs: `tlscale train` or `tlscale fewshot` on its spec
ENDED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    max_running: Mapped[int] = mapped_column(Integer, default=2)
    max_queued: Mapped[int] = mapped_column(Integer, default=100)
    max_compute_hours: Mapped[float] = mapped_column(Float, default=1000.0)  # per calendar month (UTC)


class Token(Base):
    """Only the SHA-256 of a token is kept; its first characters let a person tell tokens apart."""
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StoredFile(Base):
    """An upload: its bytes live content-addressed under the data dir (sha256), never under a client's name."""
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # shown, never used as a path
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    report: Mapped[dict] = mapped_column(JSON, default=dict)  # what validation found: rows, columns


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_team_idempotency", "team_id", "idempotency_key", unique=True),
                      Index("ix_jobs_state_priority", "state", "priority", "created_seq"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_seq: Mapped[int] = mapped_column(BigInteger, index=True)  # creation order, for lists and the queue
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    state: Mapped[str] = mapped_column(String(20))
    command: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    spec: Mapped[dict] = mapped_column(JSON)
    files: Mapped[list] = mapped_column(JSON, default=list)
    job_metadata: Mapped[dict] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)  # who runs it: "host:pid" or a Ray id
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(20), nullable=True)  # user_error | infrastructure
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # how far the run folder has become events (compare-and-set: replicas never add one twice)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    checkpoint_step: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(20))  # state | log | evaluation | checkpoint | restart
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON, default=dict)


def database_url(data_dir: Path | None, url: str | None) -> str:
    if url:  # postgresql://... means psycopg 3 here (the service extra installs it), not psycopg2
        return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url
    if data_dir is None:
        raise ValueError("a store needs --data-dir or --database-url")
    return f"sqlite:///{Path(data_dir).resolve() / 'tlscale.db'}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA busy_timeout=30000")  # writers queue instead of failing with 'database is locked'
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to Alembic's head revision (a no-op when it is there)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """An engine and a session factory over a migrated database."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        migrate(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()
