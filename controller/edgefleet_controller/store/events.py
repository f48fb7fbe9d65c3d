"""Device events (lifecycle facts a device reports: updates applied, rollbacks, canary verdicts...): stored
once per ``(device, seq)``, so events re-sent after a lost acknowledgement are skipped, and read back oldest
first in pages (``query``) or as a device's newest ``limit``, oldest of them first (``latest``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Row

from edgefleet.contract.shown import shown
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.arguments import check_json, check_now, check_page_size, check_text, is_int
from edgefleet_controller.store.db import AggregateStore, in_chunks
from edgefleet_controller.store.errors import InvalidArgument, NotFound
from edgefleet_controller.store.records import EventRecord, record_from_row


class EventInput(NamedTuple):
    """One device event to store; ``seq`` (per device) makes re-sent events idempotent."""

    kind: str
    payload: Mapping[str, Any]
    at: datetime
    seq: int | None = None


def event_record(row: Row[Any]) -> EventRecord:
    """The ``EventRecord`` of a ``device_events`` row (its payload JSON parsed)."""
    return record_from_row(EventRecord, row, payload=json.loads(row.payload_json))


class EventStore(AggregateStore):
    """Device events."""

    def record_many(self, device_id: str, events: Sequence[EventInput], now: datetime) -> int:
        """Store a device's events; those whose ``seq`` is already stored for the device are skipped
        (re-sent after a lost acknowledgement). Returns how many were stored."""
        check_now(now)
        rows: list[dict[str, Any]] = []
        seqs: set[int] = set()
        for raw in events:
            ev = EventInput(*raw)
            check_text("event kind", ev.kind, 64)
            check_now(ev.at)
            if not isinstance(ev.payload, Mapping):
                raise InvalidArgument(f"event {shown(ev.kind)} payload must be a mapping, got {shown(ev.payload)}")
            if ev.seq is not None:
                if not is_int(ev.seq) or ev.seq < 0:
                    raise InvalidArgument(f"event seq must be an integer >= 0, got {shown(ev.seq)}")
                if ev.seq in seqs:
                    continue
                seqs.add(ev.seq)
            rows.append(
                {
                    "device_id": device_id,
                    "kind": ev.kind,
                    "seq": ev.seq,
                    "payload_json": check_json(f"event {shown(ev.kind)} payload", ev.payload),
                    "at": ev.at,
                    "received_at": now,
                }
            )
        events_t = t.device_events
        with self._db.transaction() as conn:
            if conn.execute(sa.select(t.devices.c.id).where(t.devices.c.id == device_id)).first() is None:
                raise NotFound("device", device_id, "the device must enroll again")
            known: set[int] = set()
            for chunk in in_chunks(sorted(seqs)):
                known.update(
                    conn.execute(
                        sa.select(events_t.c.seq).where(events_t.c.device_id == device_id, events_t.c.seq.in_(chunk))
                    ).scalars()
                )
            fresh = [row for row in rows if row["seq"] is None or row["seq"] not in known]
            if fresh:
                conn.execute(events_t.insert(), fresh)
        return len(fresh)

    def record(
        self,
        device_id: str,
        kind: str,
        payload: Mapping[str, Any],
        at: datetime,
        now: datetime,
        seq: int | None = None,
    ) -> bool:
        """Store one event; False when its ``seq`` was already stored."""
        return self.record_many(device_id, [EventInput(kind, payload, at, seq)], now) == 1

    def query(
        self,
        *,
        device_id: str | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[EventRecord]:
        """Events oldest first; page with ``after_id`` = the last id seen."""
        check_page_size("limit", limit)
        events_t = t.device_events
        query = sa.select(events_t).order_by(events_t.c.id).limit(limit)
        if device_id is not None:
            query = query.where(events_t.c.device_id == device_id)
        if kind is not None:
            query = query.where(events_t.c.kind == kind)
        if after_id is not None:
            query = query.where(events_t.c.id > after_id)
        with self._db.read() as conn:
            return [event_record(row) for row in conn.execute(query)]

    def latest(self, device_id: str, limit: int = 100) -> list[EventRecord]:
        """The device's newest ``limit`` events (by arrival), oldest of them first, so a reader sees a tail."""
        check_page_size("limit", limit)
        events_t = t.device_events
        query = sa.select(events_t).where(events_t.c.device_id == device_id).order_by(events_t.c.id.desc()).limit(limit)
        with self._db.read() as conn:
            newest_first = [event_record(row) for row in conn.execute(query)]
        return newest_first[::-1]

    def newest_of_kind(self, device_ids: Sequence[str], kind: str) -> dict[str, EventRecord]:
        """Each device's newest event (by arrival) of ``kind``, for those that have one: one query per
        ``IN`` chunk, over the ``(device_id, kind, id)`` index."""
        events_t = t.device_events
        out: dict[str, EventRecord] = {}
        with self._db.read() as conn:
            for chunk in in_chunks(list(device_ids)):
                newest = (
                    sa.select(sa.func.max(events_t.c.id))
                    .where(events_t.c.device_id.in_(chunk), events_t.c.kind == kind)
                    .group_by(events_t.c.device_id)
                )
                for row in conn.execute(sa.select(events_t).where(events_t.c.id.in_(newest))):
                    out[row.device_id] = event_record(row)
        return out
