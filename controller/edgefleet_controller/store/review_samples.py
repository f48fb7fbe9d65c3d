"""The review queue's table as operators use it: listing review samples, their false-positive rates, and
labelling one. ``TelemetryStore`` writes the samples a device uploads (telemetry.py).

A sample is identified by ``(device_id, sample_id)`` (unique index, migration 0006): sample ids come from
devices and are scoped per device, so one device reusing another's id neither hides nor replaces that
device's sample. Labelling by id alone works while exactly one device has a sample with it, and is refused,
naming the devices, when several do.

Time is always passed in; this module never reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from edgefleet.contract.shown import shown
from edgefleet.v1.telemetry_pb2 import ReviewSample
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.db import Database
from edgefleet_controller.store.errors import InvalidArgument, NotFound
from edgefleet_controller.store.telemetry import in_scope

LABELS = frozenset({"tp", "fp"})
#: Devices an "ambiguous sample id" refusal names before "and N more".
_NAMED_DEVICES = 10


@dataclass(frozen=True, slots=True)
class ReviewRow:
    id: int
    device_id: str
    site: str
    sample: ReviewSample
    label: str
    labeled_by: str


def _review_row(r: Row[Any], include_jpeg: bool) -> ReviewRow:
    sample = ReviewSample(
        sample_id=r.sample_id,
        bundle_digest=r.bundle_digest,
        reason=r.reason,
        top_confidence=r.top_confidence,
        jpeg=bytes(r.jpeg) if include_jpeg else b"",
        results_json=r.results_json,
    )
    sample.captured_at.FromDatetime(r.captured_at)
    return ReviewRow(int(r.id), r.device_id, r.site, sample, r.label or "", r.labeled_by or "")


def _ambiguous(sample_id: str, devices: list[tuple[str, str]]) -> InvalidArgument:
    named = ", ".join(f"{shown(name)} ({device_id})" for device_id, name in devices[:_NAMED_DEVICES])
    more = f" and {len(devices) - _NAMED_DEVICES} more" if len(devices) > _NAMED_DEVICES else ""
    return InvalidArgument(
        f"review sample id {shown(sample_id)} is ambiguous: devices {named}{more} each have a sample with it; "
        "name the device (LabelReviewSampleRequest.device; fleetctl review label --device DEVICE)"
    )


class ReviewSampleStore:
    """Review-queue reads and labels over the controller's ``Database``. Synchronous; call through
    ``asyncio.to_thread``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def samples(
        self,
        *,
        site: str | None,
        bundle: str | None,
        label: str | None,
        limit: int,
        include_jpeg: bool,
        device_id: str | None = None,
        sample_id: str | None = None,
    ) -> list[ReviewRow]:
        """Samples newest first, limited to the filters given (None or empty: no filter)."""
        rv = t.review_samples
        query = sa.select(rv).order_by(rv.c.captured_at.desc(), rv.c.id.desc()).limit(limit)
        query = in_scope(query, rv, site, bundle)
        if device_id:
            query = query.where(rv.c.device_id == device_id)
        if sample_id:
            query = query.where(rv.c.sample_id == sample_id)
        if label == "unlabeled":
            query = query.where(rv.c.label.is_(None))
        elif label:
            if label not in LABELS:
                raise InvalidArgument(f"review label filter must be 'unlabeled', 'tp' or 'fp', got {shown(label)}")
            query = query.where(rv.c.label == label)
        with self._db.read() as conn:
            return [_review_row(r, include_jpeg) for r in conn.execute(query)]

    def fp_rates(self, *, site: str | None, bundle: str | None, device_id: str | None = None) -> dict[str, float]:
        """False-positive rate among labelled samples, per ``"site/bundle"`` (only ``device_id``'s samples
        when given, as ``samples`` filters them)."""
        rv = t.review_samples
        query = (
            sa.select(rv.c.site, rv.c.bundle_digest, rv.c.label, sa.func.count())
            .where(rv.c.label.is_not(None))
            .group_by(rv.c.site, rv.c.bundle_digest, rv.c.label)
        )
        query = in_scope(query, rv, site, bundle)
        if device_id:
            query = query.where(rv.c.device_id == device_id)
        totals: dict[str, list[int]] = {}
        with self._db.read() as conn:
            for s, b, label, n in conn.execute(query):
                entry = totals.setdefault(f"{s}/{b}", [0, 0])
                entry[1] += int(n)
                if label == "fp":
                    entry[0] += int(n)
        return {key: fp / total for key, (fp, total) in totals.items() if total}

    def label(
        self, sample_id: str, label: str, labeled_by: str, now: datetime, *, device_id: str | None = None
    ) -> ReviewRow:
        """Label the sample ``(device_id, sample_id)``; with no device, the one sample with that id
        (``InvalidArgument`` naming the devices when several have one). Nothing changes when refused."""
        if label not in LABELS:
            raise InvalidArgument(f"review label must be 'tp' or 'fp', got {shown(label)}")
        rv, d = t.review_samples, t.devices
        query = (
            sa.select(rv.c.id, rv.c.device_id, d.c.name)
            .join(d, d.c.id == rv.c.device_id)
            .where(rv.c.sample_id == sample_id)
            .order_by(d.c.name, rv.c.device_id)
        )
        if device_id:
            query = query.where(rv.c.device_id == device_id)
        with self._db.transaction() as conn:
            rows = conn.execute(query).all()
            if not rows:
                key = f"{device_id}/{sample_id}" if device_id else sample_id
                raise NotFound("review sample", key, "list samples with 'fleetctl review list'")
            if len(rows) > 1:
                raise _ambiguous(sample_id, [(str(r.device_id), str(r.name)) for r in rows])
            row_id = rows[0].id
            conn.execute(
                rv.update().where(rv.c.id == row_id).values(label=label, labeled_by=labeled_by, labeled_at=now)
            )
            row = conn.execute(sa.select(rv).where(rv.c.id == row_id)).one()
        return _review_row(row, False)
