"""Alembic environment: migrates the connection handed in through ``config.attributes['connection']``.

The store opens the connection (with its SQLite pragmas applied) and passes it here, so migrations run with
exactly the settings the store runs with. ``render_as_batch`` lets later migrations alter SQLite tables.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from edgefleet_controller.store.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "edgefleet store migrations run through Store.open(url) or migrate(connection); "
            "they are not meant for the alembic command line without a connection"
        )
    _run(connection)


_main()
