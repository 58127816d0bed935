"""The request log's schema: the Alembic scripts build exactly the SQLAlchemy models, on SQLite in WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402
from sqlalchemy import inspect  # noqa: E402

from _fixtures.monitor_db import migrate_concurrently  # noqa: E402
from kiln.monitor.store import (  # noqa: E402
    HEAD_REVISION,
    MIGRATIONS_DIR,
    current_revision,
    default_db_path,
    make_engine,
    metadata,
    migrate,
    parse_url,
    redact,
    safe_file_name,
    sqlite_url,
)


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "log.db"))
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert {"kiln_requests", "kiln_samples", "alembic_version"} <= tables
    engine.dispose()


def test_migrate_is_idempotent_and_safe_when_concurrent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "shared.db")
    assert migrate_concurrently(url, 4) == []
    engine = make_engine(url)
    migrate(engine)  # once more: nothing to do
    assert current_revision(engine) == HEAD_REVISION
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "log.db"  # missing folders are created
    engine = make_engine(sqlite_url(path))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()
    with sqlite3.connect(path) as raw:  # WAL is persistent: any reader sees it
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_default_path_is_under_kiln_home_named_after_the_model(tmp_path: Path) -> None:
    assert default_db_path(tmp_path, "tiny-embed") == tmp_path / "monitor" / "tiny-embed.db"
    assert default_db_path(tmp_path, "sentence-transformers/all-MiniLM-L6-v2").name == (
        "sentence-transformers_all-MiniLM-L6-v2.db"
    )
    assert safe_file_name("../..") == "_"  # never a path, never hidden
    assert safe_file_name("") == "model"


def test_urls_are_checked_and_passwords_hidden() -> None:
    with pytest.raises(ValueError, match="not a database URL"):
        parse_url("not a url")
    shown = redact("postgresql+psycopg://kiln:s3cret@db.example:5432/logs")
    assert "s3cret" not in shown and "kiln:***@db.example" in shown


def test_migration_scripts_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("r*.py"))
