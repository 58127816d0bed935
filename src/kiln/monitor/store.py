"""The request log's tables (SQLAlchemy models), its engine, and its schema migrations (Alembic).

Three tables:

    kiln_requests   one row per logged request: time (UTC), model, version, route, status, latency,
                    key id (never the key), inputs and tokens in the request, whether it was sampled,
                    the request id (``X-Request-ID``)
    kiln_samples    for sampled requests, one row per input: sha256 and length of the text (the text
                    itself only with keep-text), and a summary of its output: the embedding's L2 norm,
                    mean and a fixed 8-dimensional random projection (for drift), or label and score
    kiln_feedback   true labels sent later (``POST /v1/feedback``), by request id and input position

Where: any SQLAlchemy URL (``postgresql+psycopg://user@host/db``), else SQLite at
``KILN_HOME/monitor/<model>.db`` (:func:`default_db_path`). SQLite runs in WAL mode with
``synchronous=FULL``, and every transaction starts with ``BEGIN IMMEDIATE``: a committed batch survives
the process being killed, and concurrent writers (two servers on one file) wait for each other instead
of failing.

The schema is owned by the Alembic scripts in ``migrations/`` (shipped inside the package);
:func:`migrate` runs ``upgrade head`` in one transaction, under a lock (``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL), so servers starting together migrate once.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HEAD_REVISION = "0002"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_MIGRATION_LOCK = 0x6B696C6E  # "kiln": pg_advisory_xact_lock key held while migrating
MODEL_CHARS = 200
ROUTE_CHARS = 200
KEY_ID_CHARS = 200
LABEL_CHARS = 200
REQUEST_ID_CHARS = 128


class Base(DeclarativeBase):
    pass


class RequestRecord(Base):
    """One logged request."""

    __tablename__ = "kiln_requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str | None] = mapped_column(String(MODEL_CHARS))
    version: Mapped[str | None] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(ROUTE_CHARS))
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_CHARS))
    n_inputs: Mapped[int] = mapped_column(Integer)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    sampled: Mapped[bool] = mapped_column(Boolean)
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_CHARS))
    """The ``X-Request-ID`` the server answered with (``kiln.serve.access_log``); feedback refers to it."""

    __table_args__ = (
        Index("ix_kiln_requests_ts", "ts"),
        Index("ix_kiln_requests_model_ts", "model", "ts"),
        Index("ix_kiln_requests_request_id", "request_id"),
    )


class SampleRecord(Base):
    """One input of a sampled request and a summary of its output."""

    __tablename__ = "kiln_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("kiln_requests.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    text_sha256: Mapped[str] = mapped_column(String(64))
    text_chars: Mapped[int] = mapped_column(Integer)
    text_tokens: Mapped[int | None] = mapped_column(Integer)
    text: Mapped[str | None] = mapped_column(Text)
    emb_norm: Mapped[float | None] = mapped_column(Float)
    emb_mean: Mapped[float | None] = mapped_column(Float)
    emb_proj: Mapped[list[float] | None] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(LABEL_CHARS))
    score: Mapped[float | None] = mapped_column(Float)


class FeedbackRecord(Base):
    """A true label that arrived after the request (``POST /v1/feedback``): input ``position`` of the
    request whose ``X-Request-ID`` was ``request_id``. The latest label given for an input wins."""

    __tablename__ = "kiln_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_CHARS), index=True)
    position: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(LABEL_CHARS))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_CHARS))


metadata = Base.metadata


def safe_file_name(model: str) -> str:
    """``model`` as one file name: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", model).strip(".")
    return name or "model"


def default_db_path(home: Path, model: str) -> Path:
    """Where the request log lives unless a URL is given: ``KILN_HOME/monitor/<model>.db``."""
    return home / "monitor" / f"{safe_file_name(model)}.db"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL ``url``; ``ValueError`` with a message saying what is wrong when it is none."""
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            f"{url!r} is not a database URL: use e.g. sqlite:////path/to/log.db or "
            "postgresql+psycopg://user@host:5432/dbname"
        ) from exc


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for logs and the stats route."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    return parsed.render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's recipe for real SQLite transactions: the driver must not open them itself; the
    # "begin" hook below emits BEGIN IMMEDIATE (take the write lock at once: no upgrade deadlocks).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _set_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried: switching a new file to WAL needs its exclusive lock, and
    SQLite answers "database is locked" at once (no busy handler) while another connection opening the
    same new file holds it. Retried with a short backoff for up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _sqlite_on_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """An engine for the request log at ``url``; a SQLite file's folder is created when missing."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` for the shipped migration scripts (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest) in one transaction, under a lock."""
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (``None``: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
