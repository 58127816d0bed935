"""Databases for request-log tests: a SQLite file, and a fresh PostgreSQL database per test session.

``KILN_TEST_POSTGRES_URL`` names the server (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``,
trust auth); the fixture creates ``kiln_test_<random>`` there and drops it at the end. When no server
answers, PostgreSQL tests skip with the reason, except under ``CI=true``, where they fail: CI has one.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("KILN_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but PostgreSQL is unusable: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason} (set KILN_TEST_POSTGRES_URL to use one)")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a new, empty PostgreSQL database for this session (dropped afterwards)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    admin_url = sqlalchemy.engine.make_url(postgres_admin_url())
    admin = sqlalchemy.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"kiln_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        _unavailable(f"{admin_url.render_as_string(hide_password=True)}: {exc.orig}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def reset_postgres(url: str) -> None:
    """Drop the request log's tables (and Alembic's) so the next test migrates from scratch."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in ("kiln_feedback", "kiln_samples", "kiln_requests", "alembic_version"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def monitor_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty request-log database: a SQLite file, then (second parameter) PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'requests.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    yield url
    reset_postgres(url)


def migrate_concurrently(url: str, n: int) -> list[BaseException]:
    """Run the request log's migrations on ``url`` from ``n`` threads at once; what they raised."""
    from kiln.monitor.store import make_engine, migrate

    errors: list[BaseException] = []

    def run() -> None:
        engine = make_engine(url)
        try:
            migrate(engine)
        except BaseException as exc:  # returned to the caller, which asserts on it
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def query(url: str, sql: str) -> list[Any]:
    """Rows of ``sql`` run on the database at ``url`` (a fresh engine, disposed after)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()
