"""The telemetry tables: records stored exactly once by (device, epoch, seq), the contiguous mark, metric
windows, telemetry events, review samples and confidence baselines; retention.

``TelemetryStore`` writes in ``Database.transaction`` (``BEGIN IMMEDIATE`` on SQLite). It only reads and
writes rows: what a batch changes is decided by ``telemetry.ingest_plan`` over the facts ``ingest_facts``
read. ``commit_batch`` is ONE transaction: the new records, the pending ranges, the mark and the baseline
commit together, so an acknowledged mark never runs ahead of what is stored and a crash between two batches
loses nothing that was acknowledged. It refuses (``Conflict``, nothing stored) a plan whose mark row moved
since its facts were read, or that another writer's rows collide with; the unique ``(device_id, epoch, seq)``
constraints are the backstop of the duplicate check. A review sample whose id the device already used is
not stored again (a sample is identified by ``(device_id, sample_id)``; see ``review_samples``).

``delete_range`` removes one device's records in a time range (the admin DeleteTelemetry).

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from google.protobuf.json_format import MessageToDict, ParseDict
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from edgefleet.contract.canonical import canonical_json_text
from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import DeviceEvent, SensorReading
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database, in_chunks
from edgefleet_controller.store.errors import Conflict, InvalidArgument, NotFound
from edgefleet_controller.store.records import record_from_row
from edgefleet_controller.telemetry.drift import Baseline
from edgefleet_controller.telemetry.ingest_plan import (
    DIGEST_MAX,
    IngestFacts,
    IngestPlan,
    PlannedWindow,
    RecentWindow,
    StoredMark,
    timestamp_or,
)

log = structlog.get_logger(__name__)

#: A window may name a bundle one of the device's newest this-many stored windows named (a backlog of a
#: bundle it ran before its assignment moved on), besides what it is assigned and reports holding.
KNOWN_WINDOW_BUNDLES = 64

#: The tables of a device's telemetry records, each with the time retention and ``delete_range`` go by.
_TIMED_TABLES = (
    (t.telemetry_windows, t.telemetry_windows.c.window_start),
    (t.review_samples, t.review_samples.c.captured_at),
    (t.telemetry_events, t.telemetry_events.c.at),
)


def sensors_to_json(sensors: Sequence[SensorReading]) -> str:
    return canonical_json_text([MessageToDict(s, preserving_proto_field_name=True) for s in sensors])


def sensors_from_json(text: str) -> list[SensorReading]:
    """The readings ``sensors_to_json`` stored (fields it omitted as defaults read back as defaults)."""
    return [ParseDict(item, SensorReading(), ignore_unknown_fields=True) for item in json.loads(text)]


@dataclass(frozen=True, slots=True)
class WindowRow:
    device_id: str
    site: str
    bundle_digest: str
    window_start: datetime
    window_s: float
    frames: int
    errors: int
    latency_e2e: bytes
    latency_model: bytes
    confidence: tuple[int, ...]
    sensors_json: str
    throttling: bool
    #: The precision variant that served the window ('' from devices that predate it, and rows before 0008).
    precision: str = ""


@dataclass(frozen=True, slots=True)
class GapRow:
    """A stored ``KIND_FRAME_GAP`` event: frames a device processed and never reported in a window."""

    device_id: str
    site: str
    bundle_digest: str
    start: datetime
    end: datetime
    frames: int
    frames_known: bool
    cause: str


_Query = TypeVar("_Query", bound=sa.Select[Any])


def in_scope(query: _Query, table: sa.Table, site: str | None, bundle: str | None) -> _Query:
    """``query`` limited to ``site`` and ``bundle`` when given (empty or None: every site, every bundle)."""
    if site:
        query = query.where(table.c.site == site)
    if bundle:
        query = query.where(table.c.bundle_digest == bundle)
    return query


def _baseline_of(row: Row[Any] | None) -> Baseline | None:
    if row is None:
        return None
    return record_from_row(
        Baseline,
        row,
        windows=int(row.windows),
        windows_needed=int(row.windows_needed),
        counts=tuple(json.loads(row.counts_json)),
    )


class TelemetryStore:
    """Telemetry persistence over the controller's ``Database``. Synchronous; call through ``asyncio.to_thread``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ ingest

    def ingest_facts(
        self, device_id: str, epoch: str, recent_windows: int, *, known_bundles: bool = False
    ) -> IngestFacts:
        """What is stored for the device and ``epoch`` before a batch, with its newest ``recent_windows`` and,
        when ``known_bundles``, the bundles its windows may name (``IngestFacts.bundles``)."""
        marks, pending_t = t.telemetry_marks, t.telemetry_pending
        with self._db.read() as conn:
            device = conn.execute(
                sa.select(t.devices.c.site, t.devices.c.running_bundle).where(t.devices.c.id == device_id)
            ).first()
            if device is None:
                raise NotFound("device", device_id, "the device must enroll again")
            mark_row = conn.execute(
                sa.select(marks).where(marks.c.device_id == device_id, marks.c.epoch == epoch)
            ).first()
            pending = conn.execute(
                sa.select(pending_t.c.first_seq, pending_t.c.last_seq).where(
                    pending_t.c.device_id == device_id, pending_t.c.epoch == epoch
                )
            )
            baseline = conn.execute(
                sa.select(t.telemetry_baselines).where(t.telemetry_baselines.c.device_id == device_id)
            ).first()
            return IngestFacts(
                site=str(device.site),
                committed_bundle=device.running_bundle,
                mark=StoredMark(
                    int(mark_row.acked_through),
                    int(mark_row.records),
                    int(mark_row.duplicates),
                    int(mark_row.declared_dropped),
                )
                if mark_row is not None
                else None,
                pending=tuple((int(r.first_seq), int(r.last_seq)) for r in pending),
                baseline=_baseline_of(baseline),
                recent=self._recent_windows(conn, device_id, recent_windows) if recent_windows > 0 else (),
                bundles=self._known_bundles(conn, device_id) if known_bundles else None,
            )

    def commit_batch(self, device_id: str, plan: IngestPlan, now: datetime) -> None:
        """Store ``plan`` in one transaction (module docstring); ``Conflict`` when its facts are stale."""
        try:
            with self._db.transaction() as conn:
                self._write_mark(conn, device_id, plan, now)
                self._write_records(conn, device_id, plan, now)
                if plan.baseline is not None and plan.baseline_changed:
                    self._put_baseline(conn, device_id, plan.baseline, before=plan.facts.baseline)
        except IntegrityError:
            raise Conflict(
                f"telemetry of device {device_id} epoch {plan.epoch} was stored concurrently; read it again"
            ) from None

    def _write_mark(self, conn: Connection, device_id: str, plan: IngestPlan, now: datetime) -> None:
        marks, pending_t, epoch = t.telemetry_marks, t.telemetry_pending, plan.epoch
        read = plan.facts.mark
        stored = len(plan.fresh)
        if read is None:
            conn.execute(
                marks.insert().values(
                    device_id=device_id,
                    epoch=epoch,
                    acked_through=plan.moved.mark,
                    records=stored,
                    duplicates=plan.duplicates,
                    declared_dropped=plan.declared_dropped,
                    updated_at=now,
                )
            )
        else:
            result = conn.execute(
                marks.update()
                .where(
                    marks.c.device_id == device_id,
                    marks.c.epoch == epoch,
                    marks.c.acked_through == read.acked_through,
                    marks.c.records == read.records,
                    marks.c.duplicates == read.duplicates,
                    marks.c.declared_dropped == read.declared_dropped,
                )
                .values(
                    acked_through=plan.moved.mark,
                    records=read.records + stored,
                    duplicates=read.duplicates + plan.duplicates,
                    declared_dropped=read.declared_dropped + plan.declared_dropped,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise Conflict(f"telemetry mark of device {device_id} epoch {epoch} moved; read it again")
        if plan.moved.pending != plan.facts.pending:
            conn.execute(pending_t.delete().where(pending_t.c.device_id == device_id, pending_t.c.epoch == epoch))
            if plan.moved.pending:
                conn.execute(
                    pending_t.insert(),
                    [
                        {"device_id": device_id, "epoch": epoch, "first_seq": a, "last_seq": b}
                        for a, b in plan.moved.pending
                    ],
                )

    def _write_records(self, conn: Connection, device_id: str, plan: IngestPlan, now: datetime) -> None:
        site, epoch = plan.facts.site, plan.epoch
        windows = {w.seq: w for w in plan.windows}
        windows_rows: list[dict[str, Any]] = []
        events_rows: list[dict[str, Any]] = []
        review_rows: list[dict[str, Any]] = []
        for record in plan.fresh:
            base = {"device_id": device_id, "epoch": epoch, "seq": record.seq, "received_at": now}
            kind = record.WhichOneof("body")
            if kind == "metrics":
                windows_rows.append(self._window_row(windows[record.seq], base, site))
            elif kind == "event":
                ev = record.event
                payload = ev.SerializeToString()
                events_rows.append(
                    base
                    | {
                        "event_id": ev.event_id[:64],
                        "kind": DeviceEvent.Kind.Name(ev.kind).removeprefix("KIND_").lower(),
                        "bundle_digest": ev.bundle_digest[:DIGEST_MAX],
                        "at": timestamp_or(ev.at, now),
                        "payload": payload,
                        "size_bytes": len(payload),
                    }
                )
            else:
                rv = record.review
                review_rows.append(
                    base
                    | {
                        "sample_id": (rv.sample_id or f"{device_id}/{epoch}/{record.seq}")[:64],
                        "site": site,
                        "bundle_digest": rv.bundle_digest[:DIGEST_MAX],
                        "captured_at": timestamp_or(rv.captured_at, now),
                        "reason": rv.reason[:32],
                        "top_confidence": float(rv.top_confidence),
                        "jpeg": rv.jpeg,
                        "results_json": rv.results_json,
                        "label": None,
                        "labeled_by": None,
                        "labeled_at": None,
                        "size_bytes": len(rv.jpeg) + len(rv.results_json) + 64,
                    }
                )
        if windows_rows:
            conn.execute(t.telemetry_windows.insert(), windows_rows)
        if events_rows:
            conn.execute(t.telemetry_events.insert(), events_rows)
        review_rows = self._new_review_samples(conn, device_id, review_rows)
        if review_rows:
            conn.execute(t.review_samples.insert(), review_rows)

    @staticmethod
    def _new_review_samples(conn: Connection, device_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` less the samples whose id the device already used (stored, or earlier in this batch): the
        first sample keeps its id, its label and its place; the reused one's record is acknowledged, not stored."""
        rv = t.review_samples
        seen: set[str] = set()
        for chunk in in_chunks([r["sample_id"] for r in rows]):
            seen.update(
                conn.execute(
                    sa.select(rv.c.sample_id).where(rv.c.device_id == device_id, rv.c.sample_id.in_(chunk))
                ).scalars()
            )
        fresh = []
        for row in rows:
            if row["sample_id"] in seen:
                log.warning(
                    "telemetry.review_sample_id_reused",
                    device_id=device_id,
                    sample_id=shown(row["sample_id"]),
                    seq=row["seq"],
                )
                continue
            seen.add(row["sample_id"])
            fresh.append(row)
        return fresh

    @staticmethod
    def _window_row(planned: PlannedWindow, base: dict[str, Any], site: str) -> dict[str, Any]:
        w = planned.window
        e2e = w.latency_e2e.SerializeToString()
        row = base | {
            "site": site,
            "bundle_digest": planned.bundle_digest,
            "window_start": planned.window_start,
            "window_s": float(w.window_s),
            "frames": int(w.frames),
            "errors": int(w.errors),
            "latency_e2e": e2e,
            "latency_model": w.latency_model.SerializeToString(),
            "p95_e2e_ms": float(planned.p95_ms) if planned.p95_ms is not None else 0.0,
            "confidence_json": canonical_json_text([int(c) for c in w.confidence.counts]),
            "sensors_json": sensors_to_json(w.sensors),
            "dropped_json": canonical_json_text(dict(w.dropped)),
            "provider": w.provider[:64],
            "throttling": planned.throttling.throttling,
            # request_bounds refused any other name before the batch reached the plan; the cut is the backstop
            "precision": w.precision[: t.PRECISION_CHARS],
        }
        row["size_bytes"] = len(e2e) + len(row["latency_model"]) + len(row["sensors_json"]) + 200
        return row

    def _known_bundles(self, conn: Connection, device_id: str) -> frozenset[str]:
        """The device's desired bundle, the bundles it reports running or holding in a slot, and those of its
        newest stored windows (``KNOWN_WINDOW_BUNDLES``): one statement, whatever the batch's size."""
        w, refs, desired = t.telemetry_windows, t.device_bundle_refs, t.desired_state
        newest = (
            sa.select(w.c.bundle_digest)
            .where(w.c.device_id == device_id)
            .order_by(w.c.window_start.desc())
            .limit(KNOWN_WINDOW_BUNDLES)
            .subquery()
        )
        query = sa.union(
            sa.select(desired.c.bundle_digest).where(desired.c.device_id == device_id),
            sa.select(refs.c.bundle_digest).where(refs.c.device_id == device_id),
            sa.select(newest.c.bundle_digest),
        )
        return frozenset(str(r[0]) for r in conn.execute(query) if r[0])

    def _recent_windows(self, conn: Connection, device_id: str, limit: int) -> tuple[RecentWindow, ...]:
        w = t.telemetry_windows
        rows = conn.execute(
            sa.select(w.c.sensors_json, w.c.p95_e2e_ms)
            .where(w.c.device_id == device_id)
            .order_by(w.c.window_start.desc())
            .limit(limit)
        ).all()
        return tuple(RecentWindow(sensors_from_json(r.sensors_json), r.p95_e2e_ms or None) for r in reversed(rows))

    def _put_baseline(self, conn: Connection, device_id: str, b: Baseline, *, before: Baseline | None) -> None:
        values = {
            "bundle_digest": b.bundle_digest,
            "windows": b.windows,
            "windows_needed": b.windows_needed,
            "counts_json": canonical_json_text(list(b.counts)),
            "started_at": b.started_at,
        }
        tb = t.telemetry_baselines
        if before is None:
            conn.execute(tb.insert().values(device_id=device_id, **values))
            return
        result = conn.execute(
            tb.update()
            .where(
                tb.c.device_id == device_id, tb.c.bundle_digest == before.bundle_digest, tb.c.windows == before.windows
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise Conflict(f"telemetry baseline of device {device_id} moved; read it again")

    # ------------------------------------------------------------------ reads

    def mark(self, device_id: str, epoch: str) -> int:
        m = t.telemetry_marks
        with self._db.read() as conn:
            value = conn.execute(
                sa.select(m.c.acked_through).where(m.c.device_id == device_id, m.c.epoch == epoch)
            ).scalar()
        return int(value or 0)

    def windows(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        site: str | None = None,
        device_id: str | None = None,
        bundle: str | None = None,
    ) -> list[WindowRow]:
        w = t.telemetry_windows
        query = sa.select(
            w.c.device_id,
            w.c.site,
            w.c.bundle_digest,
            w.c.window_start,
            w.c.window_s,
            w.c.frames,
            w.c.errors,
            w.c.latency_e2e,
            w.c.latency_model,
            w.c.confidence_json,
            w.c.sensors_json,
            w.c.throttling,
            w.c.precision,
        ).order_by(w.c.window_start)
        if since is not None:
            query = query.where(w.c.window_start >= since)
        if until is not None:
            query = query.where(w.c.window_start < until)
        if device_id:
            query = query.where(w.c.device_id == device_id)
        query = in_scope(query, w, site, bundle)
        with self._db.read() as conn:
            return [
                record_from_row(
                    WindowRow,
                    r,
                    window_s=float(r.window_s),
                    frames=int(r.frames),
                    errors=int(r.errors),
                    latency_e2e=bytes(r.latency_e2e),
                    latency_model=bytes(r.latency_model),
                    confidence=tuple(json.loads(r.confidence_json)),
                    throttling=bool(r.throttling),
                )
                for r in conn.execute(query)
            ]

    def frame_gaps(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        site: str | None = None,
        device_id: str | None = None,
        bundle: str | None = None,
    ) -> list[GapRow]:
        """Declared frame gaps whose start lies in [since, until), oldest first (a gap is declared after it
        started, so ``at >= since`` bounds the read and the start is checked on the decoded gap)."""
        ev, d = t.telemetry_events, t.devices
        query = (
            sa.select(ev.c.device_id, d.c.site, ev.c.bundle_digest, ev.c.at, ev.c.payload)
            .join(d, d.c.id == ev.c.device_id)
            .where(ev.c.kind == "frame_gap")
            .order_by(ev.c.at, ev.c.id)
        )
        if since is not None:
            query = query.where(ev.c.at >= since)
        if device_id:
            query = query.where(ev.c.device_id == device_id)
        if site:
            query = query.where(d.c.site == site)
        if bundle:
            query = query.where(ev.c.bundle_digest == bundle)
        out: list[GapRow] = []
        with self._db.read() as conn:
            for r in conn.execute(query):
                gap = DeviceEvent.FromString(r.payload).frame_gap
                start, end = timestamp_or(gap.start, r.at), timestamp_or(gap.end, r.at)
                if (since is not None and start < since) or (until is not None and start >= until):
                    continue
                out.append(
                    GapRow(
                        r.device_id, r.site, r.bundle_digest, start, end, int(gap.frames), gap.frames_known, gap.cause
                    )
                )
        return out

    def recent_confidence(self, device_id: str, bundle: str, limit: int) -> list[tuple[int, ...]]:
        """Confidence histograms of the device's newest ``limit`` windows of ``bundle``."""
        w = t.telemetry_windows
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(w.c.confidence_json)
                .where(w.c.device_id == device_id, w.c.bundle_digest == bundle)
                .order_by(w.c.window_start.desc())
                .limit(limit)
            ).scalars()
            return [tuple(json.loads(r)) for r in rows]

    def baselines(self) -> dict[str, Baseline]:
        with self._db.read() as conn:
            out: dict[str, Baseline] = {}
            for row in conn.execute(sa.select(t.telemetry_baselines)):
                b = _baseline_of(row)
                if b is not None:
                    out[str(row.device_id)] = b
            return out

    def resolve_device(self, ref: str) -> str:
        """The id of the device whose id is ``ref``, or else of the one device named ``ref``; a name several
        sites use is refused (``InvalidArgument`` listing their ids), never guessed."""
        d = t.devices
        with self._db.read() as conn:
            found = conn.execute(
                sa.select(d.c.id, d.c.site).where(sa.or_(d.c.id == ref, d.c.name == ref)).order_by(d.c.id)
            ).all()
        if not found:
            raise NotFound("device", ref, "list devices with 'fleetctl get devices'")
        by_id = [r for r in found if r.id == ref]
        if by_id or len(found) == 1:
            return str((by_id or found)[0].id)
        devices = ", ".join(f"{r.id} (site {shown(r.site)})" for r in found[:10])
        raise InvalidArgument(f"device name {shown(ref)} is ambiguous: {devices}; name the device by its id")

    # ------------------------------------------------------------------ retention

    def enforce_retention(self, *, older_than: datetime, max_bytes: int) -> dict[str, int]:
        """Delete telemetry older than ``older_than``, then the oldest windows, reviews and events (in that
        order) while the stored bytes exceed ``max_bytes``. Marks and baselines are kept."""
        deleted: dict[str, int] = {}
        with self._db.transaction() as conn:
            for table, when in _TIMED_TABLES:
                result = conn.execute(table.delete().where(when < older_than))
                deleted[table.name] = int(result.rowcount or 0)
            total = sum(
                int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(tb.c.size_bytes), 0))).scalar() or 0)
                for tb, _ in _TIMED_TABLES
            )
            for table, _ in _TIMED_TABLES:
                while total > max_bytes:
                    rows = conn.execute(sa.select(table.c.id, table.c.size_bytes).order_by(table.c.id).limit(500)).all()
                    if not rows:
                        break
                    cut: list[int] = []
                    for r in rows:
                        cut.append(int(r.id))
                        total -= int(r.size_bytes)
                        if total <= max_bytes:
                            break
                    conn.execute(table.delete().where(table.c.id.in_(cut)))
                    deleted[table.name] += len(cut)
        return deleted

    def delete_range(self, device_id: str, since: datetime, until: datetime) -> dict[str, int]:
        """Delete the device's windows, telemetry events and review samples whose time lies in [since, until),
        in one transaction; how many rows of each table (by table name). Marks and baselines are kept, so
        nothing the device already sent is asked for again."""
        if not since < until:
            raise ValueError(f"delete_range needs since < until, got {since.isoformat()} and {until.isoformat()}")
        deleted: dict[str, int] = {}
        with self._db.transaction() as conn:
            if conn.execute(sa.select(t.devices.c.id).where(t.devices.c.id == device_id)).first() is None:
                raise NotFound("device", device_id, "list devices with 'fleetctl get devices'")
            for table, when in _TIMED_TABLES:
                result = conn.execute(table.delete().where(table.c.device_id == device_id, when >= since, when < until))
                deleted[table.name] = int(result.rowcount or 0)
        return deleted
