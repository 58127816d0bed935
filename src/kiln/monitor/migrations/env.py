"""Alembic environment: migrate the connection handed in by ``kiln.monitor.store.migrate``."""

from __future__ import annotations

from alembic import context

from kiln.monitor.store import make_engine, metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line: sqlalchemy.url set on its config
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("set sqlalchemy.url, or call kiln.monitor.store.migrate(engine)")
        with make_engine(url).begin() as own:
            _run(own)
        return
    _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: batch mode rebuilds the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the request log migrates online only (no --sql)")
run_migrations()
