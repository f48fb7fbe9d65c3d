"""The device's durable telemetry buffer: SQLite (WAL), bounded in bytes, with an explicit drop policy.

Records (metric windows, events, review samples) wait here until the controller acknowledges them as
stored; links can be down for hours. What this module guarantees, and how:

- **Acknowledged means durable.** ``append_many`` writes a whole batch in one transaction with
  ``synchronous=FULL`` (the WAL is fsynced at commit; ``NORMAL`` could lose the last commits on power
  loss) and returns only after the commit: the returned sequence numbers ARE the acknowledgement.
  Batching amortises the fsync. The directory is fsynced when the store file is created.
- **Sequence numbers** are assigned at the durable append, strictly increasing, and never reused: the
  next number is persisted in ``meta`` in the same transaction, and each store has a random **epoch**
  (persisted in ``meta``); a recreated store gets a new epoch, so ``(epoch, seq)`` is unique forever.
  Each stored payload is the serialized ``TelemetryRecord`` with its ``seq`` already set.
- **Classes and the drop policy.** ``event`` (events, canary verdicts), ``metrics`` and ``review``.
  Reviews never exceed ``review_quota_bytes`` (the oldest reviews go first). When the whole store would
  exceed ``max_bytes``: the oldest ``metrics`` go first, then the oldest ``review`` samples, and only if
  events alone exceed the bound the oldest ``event`` records. Records of a batch being appended may be
  dropped by that same append (their numbers were assigned and are declared dropped like any other).
  Every drop is counted per class in the same transaction (``dropped_counts()``, persistent).
- **One record that can never fit is dropped, never fatal.** A record larger than ``max_bytes`` (or a
  review sample larger than ``review_quota_bytes``; 0 means no review is ever kept) is not stored and gets
  no seq; the rest of its batch is appended. It is counted under ``<class>_too_large`` in
  ``dropped_counts()`` (so it reaches the controller in ``MetricWindow.dropped``); see ``oversize``.
- **Callers' marks commit with the records.** ``append_many(progress=...)`` writes the caller's keys
  (``progress_value``) in the same transaction: the pipeline's frames-through count says exactly which
  frames the durable windows cover (``telemetry.frame_gap``). A recreated store has none.
- **Dropped ranges need no bookkeeping**: only an ack or a drop deletes a record, and acks are
  contiguous, so every assigned seq above ``acked_through`` that is absent was dropped. ``peek_batch``
  declares those gaps (``TelemetryBatch.dropped``) so the controller's contiguous mark can pass them.
- **Bounded files.** Bytes are accounted per record with SQLite's own cell layout (payload, overflow pages,
  row and index overhead), see ``record_footprint``. The WAL is kept small with ``wal_autocheckpoint``
  + ``journal_size_limit``; after deletes past a threshold the store runs ``PRAGMA incremental_vacuum``
  (``auto_vacuum=INCREMENTAL``) and ``PRAGMA wal_checkpoint(TRUNCATE)``. The files on disk
  (``bytes_used()``: db + wal) stay within ``max_bytes + slack_bytes``, ``slack_bytes`` covering the
  WAL between checkpoints, B-tree interior/index pages and one batch in flight.
- **Corruption never crash-loops.** On open: ``PRAGMA quick_check`` and a meta check. A corrupt, truncated
  or foreign file is moved aside (``<name>.corrupt-<timestamp>``, the newest two kept), a new store with a
  NEW epoch starts, and its first record is a ``KIND_BUFFER_RESET`` event (also in ``.reset``).
  Lock and permission errors are not corruption: they raise ``TelemetryBufferError``.
- The store is opened in ``locking_mode=EXCLUSIVE``: one process owns the buffer (a second runtime
  instance fails to open instead of interleaving sequence numbers). Methods are thread-safe.

This module is the spool (open, append with the drop policy, peek, ack, compact); how a record is encoded
and what it costs in bytes is ``records``; the file's schema and moving a corrupt one aside ``spool_file``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

import structlog

from edge_runtime.telemetry.errors import TelemetryBufferError, UnusableStoreError
from edge_runtime.telemetry.oversize import Oversize
from edge_runtime.telemetry.records import (
    CLASS_CODE,
    CLASS_OF_CODE,
    DROP_ORDER,
    Batch,
    Body,
    BufferedRecord,
    RecordClass,
    classify_body,
    encode_record,
    record_footprint,
)
from edge_runtime.telemetry.spool_file import (
    create_schema,
    move_aside,
    read_stored_state,
    remove_store,
    wal_path,
)
from edgefleet.contract.durable import fsync_dir
from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import DeviceEvent

log = structlog.get_logger(__name__)

# Callers' marks live in ``meta`` under this prefix, apart from the buffer's own keys.
PROGRESS_PREFIX: Final = "progress."
_NOT_CORRUPTION: Final = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@dataclass(frozen=True, slots=True)
class BufferReset:
    """The store was unreadable at open and was recreated; ``event`` is stored as record ``seq``."""

    reason: str
    moved_to: Path | None
    event: DeviceEvent
    seq: int


class TelemetryBuffer(contextlib.AbstractContextManager["TelemetryBuffer", None]):
    """The durable, byte-bounded telemetry store of one device. See the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        review_quota_bytes: int,
        wal_limit_bytes: int | None = None,
        checkpoint_after_bytes: int | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if max_bytes <= 0:
            raise TelemetryBufferError(f"telemetry buffer: 'max_bytes' must be > 0, got {max_bytes}")
        if not 0 <= review_quota_bytes <= max_bytes:
            raise TelemetryBufferError(
                f"telemetry buffer: 'review_quota_bytes' must be within [0, max_bytes={max_bytes}], "
                f"got {review_quota_bytes}"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.review_quota_bytes = review_quota_bytes
        self.wal_limit_bytes = wal_limit_bytes or min(max(max_bytes // 8, 64 * 1024), 4 * 1024 * 1024)
        self.checkpoint_after_bytes = checkpoint_after_bytes or max(max_bytes // 8, 32 * 1024)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.page_size = 4096
        self.epoch = ""
        self.reset: BufferReset | None = None
        self._next_seq = 1
        self._acked_through = 0
        self._bytes: dict[RecordClass, int] = dict.fromkeys(RecordClass, 0)
        self._counts: dict[RecordClass, int] = dict.fromkeys(RecordClass, 0)
        self._deleted_since_compact = 0
        self._oversize = Oversize(self.path, max_bytes=max_bytes, review_quota_bytes=review_quota_bytes)
        self._open()

    # ------------------------------------------------------------------ open / create / reset

    @property
    def slack_bytes(self) -> int:
        """How far ``bytes_used()`` may exceed ``max_bytes``: WAL between checkpoints (twice, as a commit
        may land on a full WAL), interior and index pages (1/16 of the data) and 32 spare pages."""
        return 2 * self.wal_limit_bytes + self.max_bytes // 16 + 32 * self.page_size

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.5)
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise TelemetryBufferError(
                f"telemetry buffer {self.path}: could not switch to WAL mode (got {shown(mode)}); "
                "the filesystem must support shared memory or exclusive locks"
            )
        conn.execute("PRAGMA synchronous=FULL")
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA journal_size_limit={int(self.wal_limit_bytes)}")
        conn.execute(f"PRAGMA wal_autocheckpoint={max(8, self.wal_limit_bytes // self.page_size)}")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reason = ""
        if self.path.exists():
            conn = None
            try:
                conn = self._connect()
                self._configure(conn)
                self._load(conn)
                self._conn = conn
                return
            except TelemetryBufferError:
                if conn is not None:
                    conn.close()
                raise
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                name = getattr(exc, "sqlite_errorname", "")
                if name.startswith(_NOT_CORRUPTION):
                    raise TelemetryBufferError(
                        f"telemetry buffer {self.path}: cannot open ({name}: {exc}); if another edge-runtime "
                        "process is running on this data dir stop it, else check permissions"
                    ) from exc
                reason = f"{type(exc).__name__}: {exc}"
            except UnusableStoreError as exc:
                if conn is not None:
                    conn.close()
                reason = str(exc)
        moved = self._move_aside() if reason else None
        self._create()
        if reason:
            self._record_reset(reason, moved)

    def _load(self, conn: sqlite3.Connection) -> None:
        stored = read_stored_state(conn)
        self.epoch, self._next_seq, self._acked_through = stored.epoch, stored.next_seq, stored.acked_through
        self._bytes.update(stored.bytes_by_class)
        self._counts.update(stored.counts_by_class)
        self._oversize.load(conn)

    def _move_aside(self) -> Path:
        return move_aside(self.path, self._clock().strftime("%Y%m%dT%H%M%S%fZ"))

    def _create(self) -> None:
        remove_store(self.path)
        conn = self._connect()
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._configure(conn)
            self.epoch = uuid.uuid4().hex
            create_schema(conn, self.epoch, self._clock().isoformat())
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise TelemetryBufferError(
                f"telemetry buffer {self.path}: cannot create a new store ({exc}); check disk space and "
                "permissions of the data dir"
            ) from exc
        fsync_dir(self.path.parent)
        self._conn = conn
        self._next_seq = 1
        self._acked_through = 0
        self._oversize.load(None)
        log.info("telemetry.buffer_created", path=str(self.path), epoch=self.epoch)

    def _record_reset(self, reason: str, moved: Path | None) -> None:
        now = self._clock()
        event = DeviceEvent(
            event_id=str(uuid.uuid4()),
            kind=DeviceEvent.KIND_BUFFER_RESET,
            reason=(
                f"telemetry buffer {self.path.name} was unreadable ({reason}); moved aside to "
                f"{moved.name if moved else '-'}; new epoch {self.epoch}"
            ),
        )
        event.at.FromDatetime(now)
        (seq,) = self.append_many([event])
        self.reset = BufferReset(reason=reason, moved_to=moved, event=event, seq=seq)
        log.warning(
            "telemetry.buffer_reset",
            path=str(self.path),
            reason=reason,
            moved_to=str(moved) if moved else None,
            epoch=self.epoch,
        )

    # ------------------------------------------------------------------ append / drop policy

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise TelemetryBufferError(f"telemetry buffer {self.path} is closed; open a new TelemetryBuffer")
        return self._conn

    def append(self, body: Body) -> int | None:
        """Append one record durably; returns its seq (None: it can never fit, dropped and counted). Prefer
        ``append_many`` for several."""
        seqs = self.append_many([body])
        return seqs[0] if seqs else None

    def append_many(self, bodies: Iterable[Body], *, progress: Mapping[str, str] | None = None) -> list[int]:
        """Append records in one durable transaction; the returned seqs are the acknowledgement (one per
        record stored, in order: a record that can never fit is dropped and counted, and has none).

        ``progress``: the caller's own marks (``progress_value``), committed in the same transaction as the
        records, so a mark says exactly which records are durable (the pipeline's frames-through count)."""
        prepared: list[tuple[RecordClass, str, bytes]] = []
        for body in bodies:
            prepared.append(classify_body(body))
        if not prepared and not progress:
            return []
        with self._lock:
            db = self._db
            first = self._next_seq
            rows: list[tuple[int, int, int, bytes]] = []
            incoming: dict[RecordClass, int] = dict.fromkeys(RecordClass, 0)
            too_large: dict[RecordClass, int] = dict.fromkeys(RecordClass, 0)
            for cls, field, body_bytes in prepared:
                seq = first + len(rows)
                payload = encode_record(seq, field, body_bytes)
                size = record_footprint(len(payload), self.page_size)
                if self._oversize.never_fits(cls, len(payload), size):
                    too_large[cls] += 1  # no seq: it never entered the store
                    continue
                rows.append((seq, CLASS_CODE[cls], size, payload))
                incoming[cls] += size
            bytes_ = dict(self._bytes)
            counts = dict(self._counts)
            dropped: dict[RecordClass, int] = dict.fromkeys(RecordClass, 0)
            with _transaction(db):
                # Evict before inserting so the pages freed are reused by this very transaction.
                self._enforce(db, bytes_, counts, dropped, incoming)
                db.executemany("INSERT INTO records(seq, cls, size, payload) VALUES (?, ?, ?, ?)", rows)
                for cls, size in incoming.items():
                    bytes_[cls] += size
                for _, code, _, _ in rows:
                    counts[CLASS_OF_CODE[code]] += 1
                # Whatever the batch itself overflows goes now, oldest first (its own oldest records).
                self._enforce(db, bytes_, counts, dropped, dict.fromkeys(RecordClass, 0))
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(first + len(rows)),))
                db.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [(PROGRESS_PREFIX + k, v) for k, v in (progress or {}).items()],
                )
                for cls, n in dropped.items():
                    if n:
                        db.execute("UPDATE drops SET count = count + ? WHERE cls = ?", (n, cls.value))
                self._oversize.store(db, too_large)
            self._next_seq = first + len(rows)
            self._oversize.committed(too_large)
            self._bytes = bytes_
            self._counts = counts
            if any(dropped.values()):
                self._after_drops(dropped)
            return [r[0] for r in rows]

    def _enforce(
        self,
        db: sqlite3.Connection,
        bytes_: dict[RecordClass, int],
        counts: dict[RecordClass, int],
        dropped: dict[RecordClass, int],
        incoming: dict[RecordClass, int],
    ) -> None:
        """Evict stored records (oldest first) so that stored + ``incoming`` fits quota and bound.

        Where ``incoming`` records of a class would themselves be the ones to go, stop: the second pass,
        after the insert, drops those (they are older than nothing stored, younger than everything).
        """
        review_excess = bytes_[RecordClass.REVIEW] + incoming[RecordClass.REVIEW] - self.review_quota_bytes
        if review_excess > 0:
            self._evict(db, RecordClass.REVIEW, review_excess, bytes_, counts, dropped)
        need = sum(bytes_.values()) + sum(incoming.values()) - self.max_bytes
        for cls in DROP_ORDER:
            if need <= 0:
                return
            need -= self._evict(db, cls, need, bytes_, counts, dropped)
            need -= incoming[cls]

    def _evict(
        self,
        db: sqlite3.Connection,
        cls: RecordClass,
        need: int,
        bytes_: dict[RecordClass, int],
        counts: dict[RecordClass, int],
        dropped: dict[RecordClass, int],
    ) -> int:
        if need <= 0 or counts[cls] == 0:
            return 0
        freed = 0
        n = 0
        last = 0
        cursor = db.execute("SELECT seq, size FROM records WHERE cls = ? ORDER BY seq", (CLASS_CODE[cls],))
        try:
            for seq, size in cursor:
                freed += int(size)
                n += 1
                last = int(seq)
                if freed >= need:
                    break
        finally:
            # The read must be finished before the DELETE on the same table runs.
            cursor.close()
        if n == 0:
            return 0
        db.execute("DELETE FROM records WHERE cls = ? AND seq <= ?", (CLASS_CODE[cls], last))
        bytes_[cls] -= freed
        counts[cls] -= n
        dropped[cls] += n
        return freed

    def _after_drops(self, dropped: dict[RecordClass, int]) -> None:
        counts = {c.value: n for c, n in dropped.items() if n}
        log.info("telemetry.buffer_dropped", path=str(self.path), dropped=counts, bound=self.max_bytes)
        if dropped[RecordClass.EVENT]:
            log.warning(
                "telemetry.buffer_events_dropped",
                path=str(self.path),
                dropped=dropped[RecordClass.EVENT],
                event_bytes=self._bytes[RecordClass.EVENT],
                bound=self.max_bytes,
            )

    # ------------------------------------------------------------------ upload side

    def peek_batch(self, max_records: int = 500, max_bytes: int = 1 << 20, *, events_first: bool = True) -> Batch:
        """The next records to upload (not removed until ``ack``), in ascending seq.

        ``events_first``: unacknowledged events are taken before older metrics/reviews, so verdicts and
        rollbacks reach the controller first after a long outage (an event ahead of the contiguous mark
        may be re-sent until the mark passes it; the controller drops the duplicate). At least one record
        is returned even if it alone exceeds ``max_bytes``.
        """
        if max_records < 1:
            raise TelemetryBufferError(f"peek_batch: 'max_records' must be >= 1, got {max_records}")
        with self._lock:
            db = self._db
            chosen: list[BufferedRecord] = []
            budget = [max_records, max_bytes]

            def take(sql: str, args: tuple[int, ...]) -> None:
                cursor = db.execute(sql, args)
                try:
                    for seq, code, payload in cursor:
                        if budget[0] <= 0 or (chosen and len(payload) > budget[1]):
                            break
                        chosen.append(BufferedRecord(int(seq), CLASS_OF_CODE[int(code)], bytes(payload)))
                        budget[0] -= 1
                        budget[1] -= len(payload)
                finally:
                    cursor.close()

            if events_first:
                take(
                    "SELECT seq, cls, payload FROM records WHERE cls = ? ORDER BY seq LIMIT ?",
                    (CLASS_CODE[RecordClass.EVENT], max_records),
                )
                if budget[0] > 0:
                    take(
                        "SELECT seq, cls, payload FROM records WHERE cls != ? ORDER BY seq LIMIT ?",
                        (CLASS_CODE[RecordClass.EVENT], budget[0]),
                    )
                chosen.sort(key=lambda r: r.seq)
            else:
                take("SELECT seq, cls, payload FROM records ORDER BY seq LIMIT ?", (max_records,))
            upto = chosen[-1].seq if chosen else self._acked_through
            return Batch(epoch=self.epoch, records=tuple(chosen), dropped=self._gaps(db, upto))

    def _gaps(self, db: sqlite3.Connection, upto: int) -> tuple[tuple[int, int], ...]:
        """Dropped ranges above ``acked_through`` up to ``upto``, plus the gap right after it."""
        acked = self._acked_through
        gaps: list[tuple[int, int]] = [
            (int(a), int(b))
            for a, b in db.execute(
                """
                SELECT prev + 1, seq - 1 FROM (
                    SELECT seq, LAG(seq, 1, ?) OVER (ORDER BY seq) AS prev
                    FROM records WHERE seq > ? AND seq <= ?
                ) WHERE seq - prev > 1
                """,
                (acked, acked, upto),
            )
        ]
        after = db.execute("SELECT MIN(seq) FROM records WHERE seq > ?", (upto,)).fetchone()[0]
        tail_end = (int(after) if after is not None else self._next_seq) - 1
        if tail_end > upto:
            gaps.append((upto + 1, tail_end))
        return tuple(gaps)

    def ack(self, epoch: str, acked_through: int) -> int:
        """Forget records of ``epoch`` with seq <= ``acked_through``; returns how many were deleted.

        An ack for another epoch (an old store's) or below the current mark deletes nothing.
        """
        with self._lock:
            db = self._db
            if epoch != self.epoch:
                log.warning("telemetry.ack_wrong_epoch", epoch=epoch, current=self.epoch, acked=acked_through)
                return 0
            newest = self._next_seq - 1
            if acked_through > newest:
                log.warning("telemetry.ack_ahead", acked=acked_through, newest=newest, epoch=epoch)
                acked_through = newest
            if acked_through <= self._acked_through:
                return 0
            bytes_ = dict(self._bytes)
            counts = dict(self._counts)
            deleted = 0
            freed = 0
            with _transaction(db):
                for code, total, n in db.execute(
                    "SELECT cls, COALESCE(SUM(size), 0), COUNT(*) FROM records WHERE seq <= ? GROUP BY cls",
                    (acked_through,),
                ).fetchall():
                    cls = CLASS_OF_CODE[int(code)]
                    bytes_[cls] -= int(total)
                    counts[cls] -= int(n)
                    deleted += int(n)
                    freed += int(total)
                db.execute("DELETE FROM records WHERE seq <= ?", (acked_through,))
                db.execute("UPDATE meta SET value = ? WHERE key = 'acked_through'", (str(acked_through),))
            self._bytes = bytes_
            self._counts = counts
            self._acked_through = acked_through
            self._deleted_since_compact += freed
            if self._deleted_since_compact >= self.checkpoint_after_bytes:
                self._compact(db)
            return deleted

    def _compact(self, db: sqlite3.Connection) -> None:
        # Free pages go back to the filesystem, then the WAL is folded in and truncated to zero.
        # executescript steps the pragma to completion; execute() would free a single page.
        db.executescript("PRAGMA incremental_vacuum;")
        busy, wal_pages, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._deleted_since_compact = 0
        log.debug("telemetry.buffer_compacted", busy=busy, wal_pages=wal_pages, checkpointed=done)

    # ------------------------------------------------------------------ introspection

    def progress_value(self, key: str) -> str | None:
        """The caller's mark ``key`` as last committed by ``append_many(progress=...)`` (None: never, or this
        store was created since)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (PROGRESS_PREFIX + key,)).fetchone()
        return str(row[0]) if row is not None else None

    def dropped_counts(self) -> dict[str, int]:
        """Records dropped since this store was created (persistent): by the policy, by class; and records
        that could never fit, under ``oversize.too_large_key(cls)`` (``review_too_large``), once one was."""
        with self._lock:
            rows = self._db.execute("SELECT cls, count FROM drops").fetchall()
        return {str(c): int(n) for c, n in rows}

    def too_large_counts(self) -> dict[str, int]:
        """The ``<class>_too_large`` part of ``dropped_counts()``, from memory (cheap: status, reports). Not
        under the buffer's lock: the asyncio loop calls this and must not wait on an append's fsync (the copy
        of a dict of ints is atomic under the GIL)."""
        return self._oversize.counts()

    def bytes_used(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for p in (self.path, wal_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def stored_bytes(self, cls: RecordClass | None = None) -> int:
        """Accounted footprint of the records held (one class, or all)."""
        with self._lock:
            return self._bytes[cls] if cls is not None else sum(self._bytes.values())

    def count(self, cls: RecordClass | None = None) -> int:
        """Records held, unacknowledged (one class, or all)."""
        with self._lock:
            return self._counts[cls] if cls is not None else sum(self._counts.values())

    @property
    def acked_through(self) -> int:
        return self._acked_through

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def seqs(self) -> list[int]:
        """Every held seq, ascending (for tests and diagnostics)."""
        with self._lock:
            return [int(r[0]) for r in self._db.execute("SELECT seq FROM records ORDER BY seq")]

    def records(self, seqs: Sequence[int]) -> list[BufferedRecord]:
        """The held records among ``seqs``, ascending."""
        with self._lock:
            out: list[BufferedRecord] = []
            for seq in sorted(seqs):
                row = self._db.execute("SELECT cls, payload FROM records WHERE seq = ?", (seq,)).fetchone()
                if row is not None:
                    out.append(BufferedRecord(seq, CLASS_OF_CODE[int(row[0])], bytes(row[1])))
            return out

    def close(self) -> None:
        """Compact and close; idempotent."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._compact(self._conn)
            except sqlite3.DatabaseError as exc:
                log.warning("telemetry.buffer_close_compact_failed", path=str(self.path), error=str(exc))
            self._conn.close()
            self._conn = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
