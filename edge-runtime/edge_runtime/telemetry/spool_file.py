"""The telemetry buffer's SQLite file: its schema, the check that a file is one, and moving a bad one aside.

``create_schema`` writes the tables of a new store (``meta``: schema version, epoch, next seq, acked mark;
``records``; ``drops``) in one transaction; ``read_stored_state`` checks an existing file (``quick_check``,
tables, meta consistency) and returns what the buffer resumes from, raising ``UnusableStoreError`` when
the file is not a usable buffer; ``move_aside`` renames a corrupt one (with its WAL) to
``<name>.corrupt-<stamp>``, keeping only the newest ``KEEP_CORRUPT_FILES``. The spool's behaviour (append,
drop policy, acks) is ``buffer``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge_runtime.telemetry.errors import TelemetryBufferError, UnusableStoreError
from edge_runtime.telemetry.records import CLASS_OF_CODE, RecordClass
from edgefleet.contract.shown import shown

SCHEMA_VERSION: Final = "1"
KEEP_CORRUPT_FILES: Final = 2


@dataclass(frozen=True)
class StoredState:
    """What an existing store holds: its epoch and sequence marks, and each class's bytes and count."""

    epoch: str
    next_seq: int
    acked_through: int
    bytes_by_class: dict[RecordClass, int]
    counts_by_class: dict[RecordClass, int]


def wal_path(path: Path) -> Path:
    """The write-ahead log beside the store ``path``."""
    return path.with_name(path.name + "-wal")


def create_schema(conn: sqlite3.Connection, epoch: str, created_at: str) -> None:
    """The tables of a new, empty store under ``epoch``, in one transaction."""
    conn.executescript(
        f"""
        BEGIN IMMEDIATE;
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE records(
            seq INTEGER PRIMARY KEY, cls INTEGER NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL
        );
        CREATE INDEX records_by_class ON records(cls, seq, size);
        CREATE TABLE drops(cls TEXT PRIMARY KEY, count INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('epoch', '{epoch}'),
            ('next_seq', '1'), ('acked_through', '0'),
            ('created_at', '{created_at}');
        INSERT INTO drops VALUES ('event', 0), ('metrics', 0), ('review', 0);
        COMMIT;
        """
    )


def read_stored_state(conn: sqlite3.Connection) -> StoredState:
    """Check that ``conn`` holds an intact buffer and read where it stands; ``UnusableStoreError`` if not."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if [r[0] for r in rows] != ["ok"]:
        detail = "; ".join(str(r[0]) for r in rows[:3])
        raise UnusableStoreError(f"quick_check failed: {detail}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "records", "drops"} <= tables:
        raise UnusableStoreError(f"not a telemetry buffer: tables {sorted(tables)}")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UnusableStoreError(
            f"unknown schema_version {shown(meta.get('schema_version'))}, expected {SCHEMA_VERSION}"
        )
    try:
        epoch = str(meta["epoch"])
        next_seq = int(meta["next_seq"])
        acked = int(meta["acked_through"])
    except (KeyError, ValueError) as exc:
        raise UnusableStoreError(f"meta table incomplete or malformed: {shown(exc)}") from exc
    max_seq = conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]
    if not epoch or next_seq < 1 or (max_seq is not None and max_seq >= next_seq):
        raise UnusableStoreError(
            f"meta inconsistent: epoch={shown(epoch)} next_seq={next_seq} max stored seq={max_seq}"
        )
    bytes_by_class: dict[RecordClass, int] = {}
    counts_by_class: dict[RecordClass, int] = {}
    for code, total, count in conn.execute("SELECT cls, COALESCE(SUM(size), 0), COUNT(*) FROM records GROUP BY cls"):
        cls = CLASS_OF_CODE[int(code)]
        bytes_by_class[cls] = int(total)
        counts_by_class[cls] = int(count)
    return StoredState(epoch, next_seq, acked, bytes_by_class, counts_by_class)


def remove_store(path: Path) -> None:
    """Remove the store and its WAL (a WAL left without its database must not be replayed into a new one)."""
    for stale in (path, wal_path(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def move_aside(path: Path, stamp: str) -> Path:
    """Rename the unreadable store ``path`` (and its WAL) to ``<name>.corrupt-<stamp>``; returns the new path.

    Repeated corruption must not fill the disk: only the newest ``KEEP_CORRUPT_FILES`` moved-aside stores
    are kept. Raises ``TelemetryBufferError`` when the rename fails."""
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
        wal = wal_path(path)
        if wal.exists():
            os.replace(wal, wal_path(target))
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + "-shm").unlink()
    except OSError as exc:
        raise TelemetryBufferError(
            f"telemetry buffer {path} is unreadable and could not be moved aside to {target}: {exc}; "
            "free disk space or fix permissions on the data dir"
        ) from exc
    aside = sorted(path.parent.glob(f"{path.name}.corrupt-*"))
    stamps = sorted({p.name.removesuffix("-wal") for p in aside})
    for old in stamps[:-KEEP_CORRUPT_FILES]:
        remove_store(path.with_name(old))
    return target
