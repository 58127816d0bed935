"""Monitoring: the request log, reference vs live statistics, drift, label-free quality estimates.

The request log:
capture.py     what a request ran, noted by the dataplane while the request is served (no I/O)
requestlog.py  RequestEvent, the bounded queue and the writer thread that commits batches
store.py       SQLAlchemy models, the engine (SQLite WAL by default, PostgreSQL by URL), Alembic upgrade
retention.py   delete rows older than N days
migrations/    the Alembic scripts (shipped with the package)

Drift and quality (features, reference profile, estimates) have their own modules; each says what it does.

Importing ``kiln.monitor`` or ``kiln.monitor.capture`` loads no database code: a server started with
``--no-monitor`` never imports SQLAlchemy.
"""
