"""Alembic scripts for the request log schema (run by ``kiln.monitor.store.migrate``; no alembic.ini).

A new revision: change the models in ``store.py``, then write ``versions/rNNNN_<what>.py`` by hand or with

    from alembic import command
    from kiln.monitor.store import alembic_config, make_engine
    with make_engine("sqlite:////tmp/scratch.db").begin() as c:
        command.upgrade(alembic_config(c), "head")
        command.revision(alembic_config(c), "what changed", autogenerate=True, rev_id="0002")

and set ``HEAD_REVISION`` in ``store.py`` (a test checks that the models and the scripts agree).
"""
