"""The controller's database, the unit of work every aggregate store shares: SQLAlchemy Core; SQLite
default, PostgreSQL-ready.

``Database.open(url)`` creates the engine, applies SQLite pragmas on every new connection (WAL, foreign keys,
busy timeout, full fsync on commit since acknowledged telemetry and enrollments must survive power loss) and
migrates the schema to head with Alembic. ``read()`` and ``transaction()`` are the only ways the stores
touch it; every public store method is one of them, and a caller that spans aggregates (a rollout plan and
the desired states it changes) opens one ``transaction()`` and passes its connection to the ``*_in(conn,
...)`` methods. The stores are synchronous; the gRPC layer calls them through ``asyncio.to_thread``.

Concurrency: on SQLite, write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the busy
timeout instead of deadlocking on a read-to-write lock upgrade; reads use a plain ``BEGIN`` and, under WAL,
never block writers. On PostgreSQL (READ COMMITTED) every write transaction first takes one transaction-scoped
advisory lock, so writers from all replicas queue exactly as SQLite's do (bounded by the same timeout) and the
stores' read-check-then-write methods (bundle publish, bootstrap admin, config apply, event dedupe, the
rollout overlap check) stay race-free between replicas; reads never take it and never block. ``migrate``
holds the same lock, so replicas starting together migrate once. The conditional ``UPDATE``s (token uses,
the change counter, leases) and ``SELECT ... FOR UPDATE`` on desired-state rows would be safe without it.

Time is always passed in (``now``: aware UTC datetime); no store reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row

from edgefleet_controller.store.errors import NotFound

log = structlog.get_logger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
DATABASE_FILE: Final = "controller.db"
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000

_BEGIN_KEY = "edgefleet.begin"
# PostgreSQL advisory lock id serialising the store's writers (an arbitrary constant: ASCII "edgeflt\0");
# another application sharing the database would have to pick the same number to collide
_PG_WRITER_LOCK: Final = 0x656467_65666C74_00
_PG_LOCK_TIMEOUT: Final = f"{SQLITE_BUSY_TIMEOUT_MS}ms"
# another replica's migration may legitimately take longer than a write
_PG_MIGRATION_LOCK_TIMEOUT: Final = "300s"
_T = TypeVar("_T")
IN_CHUNK: Final = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def in_chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` in slices small enough for one ``IN (...)`` list on every backend."""
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


# --------------------------------------------------------------------------------------------------------
# migrations


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}; the package is incomplete")
    return head


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest schema (a no-op when already there)."""
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # session-level, held across alembic's own transaction: a second replica waits here, then
            # finds the schema at head
            connection.exec_driver_sql(f"SET lock_timeout = '{_PG_MIGRATION_LOCK_TIMEOUT}'")
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_WRITER_LOCK})")
            connection.commit()
        try:
            connection.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            before = MigrationContext.configure(connection).get_current_revision()
            connection.rollback()
            connection.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            command.upgrade(_alembic_config(connection), "head")
            connection.commit()
        finally:
            if postgres:
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_WRITER_LOCK})")
                connection.exec_driver_sql("RESET lock_timeout")
                connection.commit()
    head = head_revision()
    if before != head:
        log.info("store.migrated", from_revision=before, to_revision=head)


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # autocommit at the driver level: the "begin" hook below issues BEGIN itself, which pysqlite
        # would otherwise do lazily and only before DML
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # popped, so a connection used outside read()/transaction() never inherits a stale BEGIN IMMEDIATE
        connection.exec_driver_sql(connection.info.pop(_BEGIN_KEY, "BEGIN"))


# --------------------------------------------------------------------------------------------------------


class Database:
    """One engine at the newest schema. Create with ``Database.open(url)`` or ``Database.open_data_dir(path)``."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose database is already at the newest schema (``open`` does both)."""
        self._engine = engine

    @classmethod
    def open(cls, url: str | sa.URL) -> Database:
        """Connect to ``url`` (``sqlite:///path`` or ``postgresql+driver://...``) and migrate it to head."""
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":
            _install_sqlite_pragmas(engine)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @classmethod
    def open_data_dir(cls, data_dir: Path | str) -> Database:
        """The embedded default: SQLite file ``<data_dir>/controller.db`` (the directory is created)."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        return cls.open(sa.URL.create("sqlite", database=str(path / DATABASE_FILE)))

    @property
    def engine(self) -> Engine:
        return self._engine

    def schema_revision(self) -> str | None:
        with self.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (plain ``BEGIN``: never blocks writers under WAL)."""
        with self._engine.connect() as conn:
            conn.info[_BEGIN_KEY] = "BEGIN"
            with conn.begin():
                yield conn

    def read_one(self, query: sa.Select[Any], kind: str, key: str, hint: str) -> Row[Any]:
        """The one row ``query`` reads; ``NotFound(kind, key, hint)`` when it reads none."""
        with self.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise NotFound(kind, key, hint)
        return row

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends (rolled back on an exception). Callers that
        combine several aggregates pass its connection to the stores' ``*_in(conn, ...)`` methods."""
        with self._engine.connect() as conn:
            conn.info[_BEGIN_KEY] = "BEGIN IMMEDIATE"
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # PostgreSQL's BEGIN IMMEDIATE (see the module docstring); released at commit/rollback
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_PG_LOCK_TIMEOUT}'")
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITER_LOCK})")
                yield conn


class AggregateStore:
    """Base of the per-aggregate stores: each works on one ``Database`` it is given (never opens one)."""

    def __init__(self, db: Database) -> None:
        self._db = db
